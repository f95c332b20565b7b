"""Config blocks of the slide stages: demo slides, tissue mask, tiling, export, neighbour graphs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoConfig:
    """Config `demo`: the synthetic cohort's slides, made by rule demo_slide."""

    enabled: bool = True  # generate the slides of the demo sheet
    width: int = 3072  # level-0 width of a demo slide, px
    height: int = 2048  # level-0 height, px
    mpp: float = 0.5  # scan resolution, microns per px


@dataclass(frozen=True)
class TissueParams:
    """Thresholds for `tissue_mask`; defaults work on H&E scans."""

    min_saturation: float = 0.07  # floor under Otsu's saturation threshold (0-1)
    max_value: float = 0.94  # brighter than this is glass/background (0-1)
    min_value: float = 0.12  # darker than this is black ink or debris (0-1)
    exclude_ink: bool = True  # drop blue, green and black pen marks
    black_ink_value: float = 0.3  # black ink: darker than this (0-1) ...
    black_ink_saturation: float = 0.4  # ... and less saturated than this (H&E's darkest is saturated purple)
    close_radius_um: float = 16.0  # morphological closing radius, microns
    min_object_um2: float = 20000.0  # tissue pieces smaller than this are dropped, square microns
    max_hole_um2: float = 40000.0  # holes smaller than this inside tissue are kept as tissue
    exclude_blur: bool = True  # drop out-of-focus regions (low local Laplacian variance)
    min_sharpness: float = 3e-4  # local Laplacian variance (grey 0-1) below this is blurry
    blur_window_um: float = 128.0  # side of the window the Laplacian variance is taken over, microns
    min_blur_um2: float = 50000.0  # blurry patches smaller than this stay tissue (smooth, not blurred)


@dataclass(frozen=True)
class MaskConfig(TissueParams):
    """Config `mask`: the tissue thresholds and the mask's resolution."""

    mask_mpp: float = 8.0  # resolution of the tissue mask, microns per px


@dataclass(frozen=True)
class TileParams:
    """What shapes a tile store (written into its attributes)."""

    target_mpp: float = 1.0  # microns per pixel of the stored tiles
    tile_size: int = 64  # tile edge at target mpp, px
    min_tissue: float = 0.5  # keep a tile when this fraction of it is tissue
    jpeg_quality: int = 90  # JPEG quality of stored tiles
    shard_tiles: int = 256  # tiles per shard file
    strip_tiles: int = 32  # adjacent tiles read (and resampled) per call (bounds memory)
    allow_upsample: bool = False  # permit target_mpp finer than the scan
    copy_jpeg: bool = True  # store a tile that is exactly one source JPEG tile as that JPEG (no re-encode)


@dataclass(frozen=True)
class TileConfig(TileParams):
    """Config `tile`: the tile parameters and how many slides one job tiles."""

    slides_per_job: int = 16  # slides masked and tiled per job, one after another

    def params(self) -> TileParams:
        """The tile parameters alone: batching changes no tile, so stores do not record it."""
        return TileParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TileParams)})


@dataclass(frozen=True)
class ExportConfig:
    """Config `export`: CLAM/TRIDENT-style HDF5 files."""

    encoder: str | None = None  # also write this encoder's features; None: coords only


@dataclass(frozen=True)
class GraphConfig:
    """Config `graph`: tile neighbour graphs."""

    radius: int = 1  # Chebyshev radius on the tile grid
    slides_per_job: int = 32  # graphs built per job
