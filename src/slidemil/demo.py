"""Synthetic demo cohort: pyramidal JPEG TIFF slides with H&E-like tissue and annotated "tumour".

Each slide is rendered as stain optical densities (haematoxylin H, eosin E) and turned into RGB
by Beer-Lambert with a per-slide perturbed stain matrix, so colour varies between slides as it
does between hospitals and never gives the label away. Positive slides carry a few spatially
coherent tumour blobs (large, dark, crowded nuclei); some slides of either class carry "mimics"
(a diffuse haematoxylin wash with ordinary nuclei: tumour-like colour, normal texture).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

# Ruifrok & Johnston optical-density vectors (RGB) for haematoxylin and eosin.
_H_OD = np.array([0.650, 0.704, 0.286])
_E_OD = np.array([0.072, 0.990, 0.105])


@dataclass(frozen=True)
class DemoSlideSpec:
    width: int = 4096  # level-0 pixels
    height: int = 3072
    mpp: float = 0.5  # microns per level-0 pixel
    tissue_fraction: float = 0.4  # of the slide area, roughly
    tumour_fraction: tuple[float, float] = (0.02, 0.10)  # of the tissue, for positive slides
    mimic_probability: float = 0.5  # chance a slide carries mimic regions
    tile_size: int = 256  # TIFF tile edge
    jpeg_quality: int = 85


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit sd."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-8)


def _threshold_for_fraction(field: np.ndarray, fraction: float, within: np.ndarray | None = None) -> np.ndarray:
    values = field[within] if within is not None else field.ravel()
    if values.size == 0:
        return np.zeros_like(field, dtype=bool)
    cut = np.quantile(values, 1.0 - fraction)
    out = field > cut
    return out & within if within is not None else out


def _blobs(rng: np.random.Generator, lowres: tuple[int, int], within: np.ndarray, fraction: float,
           n_blobs: int) -> np.ndarray:
    """A few compact blobs covering about `fraction` of `within` (both at low resolution)."""
    ys, xs = np.nonzero(within)
    if ys.size == 0:
        return np.zeros(lowres, dtype=bool)
    field = np.zeros(lowres)
    yy, xx = np.mgrid[: lowres[0], : lowres[1]]
    # keep seeds away from the tissue border so blobs stay inside tissue
    inner = ndi.binary_erosion(within, iterations=3)
    iy, ix = np.nonzero(inner) if inner.any() else (ys, xs)
    for k in rng.choice(iy.size, size=n_blobs, replace=False if iy.size >= n_blobs else True):
        cy, cx = iy[k], ix[k]
        r = rng.uniform(2.0, 5.0)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    field += 0.05 * _smooth_field(rng, lowres, 1.5)
    return _threshold_for_fraction(field, fraction * within.sum() / max(within.sum(), 1), within) & within


def _nuclei(rng: np.random.Generator, region: np.ndarray, density: float, radius: int) -> np.ndarray:
    """Binary map of disc nuclei of given radius (px) with Poisson centres at `density` per px."""
    ys, xs = np.nonzero(region)
    keep = rng.random(ys.size) < density
    ys, xs = ys[keep], xs[keep]
    dy, dx = np.nonzero(_disc(radius))
    # stamp a disc at every centre by fancy indexing: far cheaper than a binary dilation
    yy = np.clip(ys[:, None] + dy[None, :] - radius, 0, region.shape[0] - 1)
    xx = np.clip(xs[:, None] + dx[None, :] - radius, 0, region.shape[1] - 1)
    out = np.zeros(region.shape, dtype=bool)
    out[yy.ravel(), xx.ravel()] = True
    return out


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a low-res mask to `shape`."""
    ry = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    rx = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return mask[np.ix_(ry, rx)]


def render_slide(slide_seed: int, positive: bool, spec: DemoSlideSpec = DemoSlideSpec()):
    """Render one slide. Returns (rgb uint8 [H,W,3], tumour mask at low res, low-res scale)."""
    rng = np.random.default_rng(slide_seed)
    H, W = spec.height, spec.width
    scale = 32  # low-res grid step in level-0 px
    lowres = (H // scale, W // scale)

    tissue_lr = _threshold_for_fraction(_smooth_field(rng, lowres, 6.0), spec.tissue_fraction)
    tissue_lr = ndi.binary_opening(tissue_lr, iterations=2)
    tumour_lr = np.zeros(lowres, dtype=bool)
    if positive:
        frac = rng.uniform(*spec.tumour_fraction)
        tumour_lr = _blobs(rng, lowres, tissue_lr, frac, n_blobs=int(rng.integers(2, 5)))
    mimic_lr = np.zeros(lowres, dtype=bool)
    if rng.random() < spec.mimic_probability:
        mimic_lr = _blobs(rng, lowres, tissue_lr & ~tumour_lr, rng.uniform(0.03, 0.08), int(rng.integers(2, 4)))

    tissue = _upsample(tissue_lr, (H, W))
    tumour = _upsample(tumour_lr, (H, W)) & tissue
    mimic = _upsample(mimic_lr, (H, W)) & tissue & ~tumour
    normal = tissue & ~tumour

    eosin = tissue * (0.35 + 0.08 * _smooth_field(rng, (H, W), 4.0))
    haem = 0.04 * tissue.astype(np.float32)
    haem += 0.55 * _nuclei(rng, normal, density=0.0025, radius=3)
    haem += 0.90 * _nuclei(rng, tumour, density=0.0030, radius=7)
    haem += 0.32 * mimic  # diffuse wash: tumour-like mean colour, no large nuclei
    haem = ndi.gaussian_filter(haem, 0.8)

    # per-slide stain variation (hue and intensity), as between scanners and labs
    h_vec = _H_OD * rng.uniform(0.8, 1.2, 3)
    e_vec = _E_OD * rng.uniform(0.8, 1.2, 3)
    intensity = rng.uniform(0.8, 1.2)
    rgb = np.empty((H, W, 3), np.uint8)
    for c in range(3):  # per channel keeps float temporaries at one plane
        od = intensity * (haem * np.float32(h_vec[c]) + eosin * np.float32(e_vec[c]))
        plane = 245.0 * np.exp(-od) + 3.0 * rng.standard_normal((H, W), dtype=np.float32)
        rgb[..., c] = np.clip(plane, 0, 255)
    return rgb, tumour_lr, scale


def tumour_geojson(tumour_lr: np.ndarray, scale: int) -> dict:
    """Tumour outlines as a GeoJSON FeatureCollection in level-0 pixel coordinates."""
    from skimage import measure

    features = []
    padded = np.pad(tumour_lr.astype(np.float32), 1)
    for contour in measure.find_contours(padded, 0.5):
        ring = [[float((x - 1 + 0.5) * scale), float((y - 1 + 0.5) * scale)] for y, x in contour]
        if len(ring) < 4:
            continue
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        features.append({"type": "Feature", "properties": {"classification": "tumour"},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": features}


def write_pyramidal_tiff(rgb: np.ndarray, path: Path, mpp: float, tile_size: int = 256, quality: int = 85) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF with resolution tags that OpenSlide reads."""
    import pyvips

    path.parent.mkdir(parents=True, exist_ok=True)
    img = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb")
    px_per_mm = 1000.0 / mpp
    tmp = path.with_name(path.name + ".part.tiff")
    img.tiffsave(str(tmp), tile=True, tile_width=tile_size, tile_height=tile_size, pyramid=True,
                 compression="jpeg", Q=quality, xres=px_per_mm, yres=px_per_mm, resunit="cm")
    tmp.replace(path)


def make_demo_slide(slide_id: str, label: int, seed: int, slide_path: Path, annotation_path: Path,
                    spec: DemoSlideSpec = DemoSlideSpec()) -> None:
    """Render and write one demo slide plus its GeoJSON tumour annotation."""
    # a stable per-slide seed from the cohort seed and the slide id
    slide_seed = int(np.random.SeedSequence([seed, *slide_id.encode()]).generate_state(1)[0])
    rgb, tumour_lr, scale = render_slide(slide_seed, bool(label), spec)
    write_pyramidal_tiff(rgb, Path(slide_path), spec.mpp, spec.tile_size, spec.jpeg_quality)
    annotation_path = Path(annotation_path)
    annotation_path.parent.mkdir(parents=True, exist_ok=True)
    annotation_path.write_text(json.dumps(tumour_geojson(tumour_lr, scale)))
