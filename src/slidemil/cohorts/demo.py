"""Synthetic demo cohort: pyramidal JPEG TIFF slides with H&E-like tissue, annotated tumour and mimics.

The cohort is built to leave headroom between a random-feature floor and a trained ceiling
(benchmarks/demo_headroom.py measures it):

- Tumour differs from benign tissue by *morphology* more than by colour: crowded, back-to-back
  glands lined by several layers of large, elongated, irregular, vesicular nuclei (pale chromatin,
  dark rim, a nucleolus) in random orientations.
- Mimics (benign, label 0) copy the tumour's layout and haematoxylin density - crowded glands of
  small lumens - but their nuclei are round, uniform and evenly dark. A colour or random-feature
  encoder sees "dense blue glands" in both; a trained one can tell the nuclei apart. Most negative
  slides carry mimics (and some positive ones), written as their own GeoJSON for hard-negative
  mining to be checked against.
- Benign glandular lobules (single-layer rings of small round nuclei, open lumens) and fibrous
  stroma with spindle nuclei and lymphocytes make up the rest of the tissue.
- Stain and patient vary between slides (Beer-Lambert with a perturbed stain matrix and
  intensity; nuclear size and density scales), as between hospitals and patients.
- Tumour and mimic regions are a few blobs several 64 um tiles across, so neighbouring tiles share
  labels. Tumour covers 2-20% of a positive slide's tissue, from micro- to macro-metastasis: mean
  pooling dilutes the small ones, which attention can still find.
- Tumour grade varies between slides (nuclear size 0.7-1.05 x TUMOUR_GLAND's): random features
  separate only high-grade tumour from mimics, so attention MIL on them sits above chance and below
  a trained encoder (the bounds of benchmarks/demo_headroom.py).

A slide is drawn at `render_mpp` (1 um/px, the demo's tile resolution) and upsampled to the scan
resolution `mpp`, so tiling still picks a pyramid level by mpp while rendering costs 4x less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from slidemil.config import DemoConfig
from slidemil.files import atomic_path, write_text

# Ruifrok & Johnston optical-density vectors (RGB) for haematoxylin and eosin.
_H_OD = np.array([0.650, 0.704, 0.286])
_E_OD = np.array([0.072, 0.990, 0.105])
LOWRES_STEP = 32  # level-0 px per cell of the region maps (tumour, mimic, tissue)


@dataclass(frozen=True)
class DemoSlideSpec:
    width: int = DemoConfig.width  # level-0 pixels (config `demo`, the one default)
    height: int = DemoConfig.height
    mpp: float = DemoConfig.mpp  # microns per level-0 pixel
    render_mpp: float = 1.0  # tissue is drawn at this resolution and upsampled (integer factor) to mpp
    tissue_fraction: float = 0.5  # of the slide area, roughly
    tumour_fraction: tuple[float, float] = (0.02, 0.2)  # of the tissue, positive slides (micro- to macro-metastasis)
    mimic_fraction: tuple[float, float] = (0.15, 0.35)  # of the tissue, slides with mimics
    mimic_probability: tuple[float, float] = (0.9, 0.4)  # chance of mimics on (negative, positive) slides
    lobule_fraction: tuple[float, float] = (0.25, 0.6)  # benign glandular lobules, of the tissue (per slide)
    lobule_crowding: tuple[float, float] = (0.45, 1.0)  # per slide: 0 = open single-layer glands, 1 = mimic-like
    blob_sd_tiles: tuple[float, float] = (1.3, 2.6)  # sd of a tumour/mimic blob, in 64 um tiles (blobs 3-6 tiles across)
    blobs: tuple[int, int] = (2, 4)  # mimic blobs per slide, inclusive range
    tumour_per_blob: float = 0.08  # tumour blobs = this fraction of tissue each (at least one): micro-metastases stay whole
    mimic_size: tuple[float, float] = (0.85, 1.1)  # mimic nuclear size over MIMIC_GLAND's, per slide
    tumour_vesicular: tuple[float, float] = (0.6, 0.95)  # per slide: from hyperchromatic (0) to vesicular (1) tumour nuclei
    tumour_size: tuple[float, float] = (0.7, 1.05)  # per slide (grade): tumour nuclear size over TUMOUR_GLAND's
    tile_size: int = 256  # TIFF tile edge
    jpeg_quality: int = 85


@dataclass
class DemoRender:
    """One rendered slide: level-0 RGB and the region maps on the low-res grid."""

    rgb: np.ndarray  # uint8 [H, W, 3] at spec.mpp
    tumour_lr: np.ndarray  # bool [H // step, W // step]
    mimic_lr: np.ndarray  # bool, same grid; disjoint from tumour_lr
    tissue_lr: np.ndarray  # bool, same grid
    scale: int  # level-0 px per low-res cell


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit sd, float32."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-8)


def _threshold_for_fraction(field: np.ndarray, fraction: float, within: np.ndarray | None = None) -> np.ndarray:
    values = field[within] if within is not None else field.ravel()
    if values.size == 0:
        return np.zeros_like(field, dtype=bool)
    # a slide with little room left (e.g. lobules in the tissue that tumour and mimics spared) can ask for
    # more than all of it: take all of it
    cut = np.quantile(values, 1.0 - min(max(fraction, 0.0), 1.0))
    out = field > cut
    return out & within if within is not None else out


def _blobs(rng: np.random.Generator, within: np.ndarray, fraction: float, radius: tuple[float, float],
           n_blobs: int) -> np.ndarray:
    """A few compact blobs covering about `fraction` of `within` (both on the low-res grid).

    radius: blob radius range in low-res cells; with 4 cells per tile, 6-14 cells keep a blob
    several tiles across, so neighbouring tiles share labels.
    """
    shape = within.shape
    inner = ndi.binary_erosion(within, iterations=4)
    iy, ix = np.nonzero(inner if inner.any() else within)
    if iy.size == 0 or fraction <= 0:
        return np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    field = np.zeros(shape, np.float32)
    for k in rng.choice(iy.size, size=n_blobs, replace=iy.size < n_blobs):
        r = rng.uniform(*radius)
        field = np.maximum(field, np.exp(-((yy - iy[k]) ** 2 + (xx - ix[k]) ** 2) / (2 * r**2)))
    field += 0.08 * _smooth_field(rng, shape, 2.0)  # ragged, not circular, edges
    out = _threshold_for_fraction(field, fraction, within)
    return ndi.binary_opening(out, iterations=1) & within


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a low-res map to `shape`."""
    ry = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    rx = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return mask[np.ix_(ry, rx)]


@dataclass
class Nuclei:
    """Nucleus parameters, one entry per nucleus (render px): centre, semi-axes, angle, look."""

    y: np.ndarray
    x: np.ndarray
    a: np.ndarray  # semi-major axis
    b: np.ndarray  # semi-minor axis
    theta: np.ndarray  # orientation, radians
    od: np.ndarray  # peak haematoxylin optical density
    vesicular: np.ndarray  # 0..1: pale centre, dark rim, nucleolus (tumour) vs evenly dark
    irregular: np.ndarray  # amplitude of contour wobble (0 = ellipse)

    @staticmethod
    def cat(parts: list["Nuclei"]) -> "Nuclei":
        return Nuclei(*(np.concatenate([getattr(p, f) for p in parts]) for f in Nuclei.__dataclass_fields__))


def _nuclei(y, x, a, b, theta, od, vesicular=0.0, irregular=0.0) -> Nuclei:
    n = len(y)
    full = lambda v: np.broadcast_to(np.asarray(v, np.float32), (n,)).astype(np.float32)  # noqa: E731
    return Nuclei(full(y), full(x), full(a), full(b), full(theta), full(od), full(vesicular), full(irregular))


def _stamp(haem: np.ndarray, nuc: Nuclei, rng: np.random.Generator) -> None:
    """Draw nuclei into the haematoxylin OD map [H, W] in place (overlaps keep the darker value)."""
    H, W = haem.shape
    if len(nuc.y) == 0:
        return
    reach = np.ceil(nuc.a * 1.3 + 1).astype(int)
    phase = rng.uniform(0, 2 * np.pi, len(nuc.y)).astype(np.float32)
    for R in np.unique(reach):  # one vectorised pass per bounding-box size
        sel = np.nonzero(reach == R)[0]
        dy, dx = [g.ravel().astype(np.float32) for g in np.mgrid[-R : R + 1, -R : R + 1]]
        cy, cx = np.round(nuc.y[sel]), np.round(nuc.x[sel])
        oy = (cy - nuc.y[sel])[:, None] + dy[None]  # offsets from the true (sub-pixel) centre
        ox = (cx - nuc.x[sel])[:, None] + dx[None]
        c, s = np.cos(nuc.theta[sel])[:, None], np.sin(nuc.theta[sel])[:, None]
        u = (ox * c + oy * s) / nuc.a[sel, None]
        v = (-ox * s + oy * c) / nuc.b[sel, None]
        rho = np.sqrt(u * u + v * v)
        irr = nuc.irregular[sel, None]
        if irr.any():
            ang = np.arctan2(v, u)
            rho = rho * (1 + irr * (np.cos(3 * ang + phase[sel, None]) + 0.5 * np.cos(5 * ang + 2 * phase[sel, None])))
        edge = np.clip((1.0 - rho) * nuc.b[sel, None] * 1.2 + 0.5, 0, 1)  # ~1 px soft edge
        ves = nuc.vesicular[sel, None]
        # vesicular chromatin: pale centre rising to a dark rim, plus a central nucleolus
        chroma = (1 - ves) + ves * (0.35 + 0.65 * np.clip(rho, 0, 1) ** 2 + 0.9 * (u * u * nuc.a[sel, None] ** 2 + v * v * nuc.b[sel, None] ** 2 < 1.6))
        val = nuc.od[sel, None] * edge * chroma
        yy = (cy[:, None] + dy[None]).astype(np.int64)
        xx = (cx[:, None] + dx[None]).astype(np.int64)
        ok = (val > 0.01) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        np.maximum.at(haem, (yy[ok], xx[ok]), val[ok].astype(np.float32))


def _jittered_grid(rng: np.random.Generator, region: np.ndarray, spacing: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on a jittered square grid of `spacing` px that fall inside `region` [H, W]."""
    H, W = region.shape
    gy, gx = np.mgrid[spacing / 2 : H : spacing, spacing / 2 : W : spacing]
    y = gy.ravel() + rng.uniform(-jitter, jitter, gy.size) * spacing
    x = gx.ravel() + rng.uniform(-jitter, jitter, gx.size) * spacing
    ok = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    y, x = y[ok], x[ok]
    keep = region[y.astype(int), x.astype(int)]
    return y[keep].astype(np.float32), x[keep].astype(np.float32)


def _scatter(rng: np.random.Generator, region: np.ndarray, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Poisson points at `density` per px inside `region`."""
    ys, xs = np.nonzero(region)
    keep = rng.random(ys.size) < density
    return (ys[keep] + rng.random(keep.sum())).astype(np.float32), (xs[keep] + rng.random(keep.sum())).astype(np.float32)


@dataclass(frozen=True)
class GlandStyle:
    """How the glands of one tissue kind look (render px at 1 um/px)."""

    spacing: float  # gland centre spacing
    lumen: tuple[float, float]  # lumen radius range
    layers: int  # nuclear layers around the lumen
    nuc_gap: float  # arc length between neighbouring nuclei of a layer
    size: float  # mean semi-major axis of nuclei
    size_sd: float  # log-normal sd of nuclear size (pleomorphism)
    aspect: tuple[float, float]  # semi-major / semi-minor range
    radial: bool  # nuclei point away from the lumen (orderly) or at random (haphazard)
    od: float  # peak haematoxylin OD
    vesicular: float
    irregular: float
    fill_density: float  # extra nuclei scattered between glands, per px


NORMAL_GLAND = GlandStyle(spacing=34, lumen=(7, 11), layers=1, nuc_gap=6.0, size=2.6, size_sd=0.08,
                          aspect=(1.0, 1.2), radial=True, od=0.85, vesicular=0.0, irregular=0.0, fill_density=0.0)
TUMOUR_GLAND = GlandStyle(spacing=24, lumen=(2.5, 5), layers=2, nuc_gap=8.0, size=5.2, size_sd=0.28,
                          aspect=(1.4, 2.3), radial=False, od=1.05, vesicular=0.8, irregular=0.16, fill_density=0.004)
MIMIC_GLAND = GlandStyle(spacing=24, lumen=(2.5, 5), layers=2, nuc_gap=7.0, size=3.2, size_sd=0.06,
                         aspect=(1.0, 1.15), radial=True, od=0.95, vesicular=0.0, irregular=0.0, fill_density=0.005)


def _lerp_style(a: GlandStyle, b: GlandStyle, t: float) -> GlandStyle:
    """A style between `a` (t=0) and `b` (t=1): numbers interpolated, layers rounded, flags from `a`."""
    mix = lambda u, v: tuple(mix(p, q) for p, q in zip(u, v)) if isinstance(u, tuple) else u + t * (v - u)  # noqa: E731
    fields = {f: getattr(a, f) if isinstance(getattr(a, f), bool) else mix(getattr(a, f), getattr(b, f))
              for f in GlandStyle.__dataclass_fields__}
    fields["layers"] = int(round(fields["layers"]))
    return GlandStyle(**fields)


def _glands(rng: np.random.Generator, region: np.ndarray, style: GlandStyle, size_scale: float,
            lumen_mask: np.ndarray) -> Nuclei:
    """Glands of `style` filling `region` [H, W]: marks their lumens in `lumen_mask`, returns their nuclei."""
    gy, gx = _jittered_grid(rng, region, style.spacing, 0.18)
    parts = []
    lumen_r = rng.uniform(*style.lumen, gy.size).astype(np.float32)
    for layer in range(style.layers):
        ring = lumen_r + 3.0 + layer * 2.0 * style.size * size_scale * 0.9
        n_per = np.maximum(4, np.round(2 * np.pi * ring / (style.nuc_gap * size_scale))).astype(int)
        gi = np.repeat(np.arange(gy.size), n_per)
        k = np.concatenate([np.arange(n) for n in n_per]) if n_per.size else np.zeros(0, int)
        ang = 2 * np.pi * (k / np.repeat(n_per, n_per)) + np.repeat(rng.uniform(0, 2 * np.pi, gy.size), n_per)
        ang = ang + rng.normal(0, 0.08 if style.radial else 0.2, ang.size)
        r = np.repeat(ring, n_per) + rng.normal(0, 0.3 if style.radial else 1.2, ang.size)
        parts.append((gy[gi] + r * np.sin(ang), gx[gi] + r * np.cos(ang), ang))
    y = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    x = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    ang = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    fy, fx = _scatter(rng, region, style.fill_density)
    y, x = np.concatenate([y, fy]), np.concatenate([x, fx])
    ang = np.concatenate([ang, rng.uniform(0, 2 * np.pi, fy.size)])
    H, W = region.shape
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    inside[inside] = region[y[inside].astype(int), x[inside].astype(int)]
    y, x, ang = y[inside], x[inside], ang[inside]
    n = y.size
    a = style.size * size_scale * np.exp(rng.normal(0, style.size_sd, n))
    b = a / rng.uniform(*style.aspect, n)
    theta = ang if style.radial else rng.uniform(0, np.pi, n)
    od = style.od * rng.uniform(0.85, 1.1, n)
    # lumens: clear eosin inside each gland's lumen (a disc), only within the region
    _discs(lumen_mask, gy, gx, lumen_r, region)
    return _nuclei(y, x, a, b, theta, od, style.vesicular, style.irregular)


def _discs(out: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, region: np.ndarray) -> None:
    """Set `out` True on discs (centres cy, cx, radii r) where `region` is True."""
    H, W = out.shape
    R = int(np.ceil(r.max())) if r.size else 0
    if R == 0:
        return
    dy, dx = [g.ravel() for g in np.mgrid[-R : R + 1, -R : R + 1]]
    yy = np.round(cy)[:, None].astype(int) + dy[None]
    xx = np.round(cx)[:, None].astype(int) + dx[None]
    ok = (dy[None] ** 2 + dx[None] ** 2 <= r[:, None] ** 2) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    yy, xx = yy[ok], xx[ok]
    keep = region[yy, xx]
    out[yy[keep], xx[keep]] = True


def _regions(rng: np.random.Generator, spec: DemoSlideSpec, positive: bool, lowres: tuple[int, int]):
    """(tissue, tumour, mimic, lobule) maps on the low-res grid; tumour, mimic and lobule disjoint."""
    tissue = _threshold_for_fraction(_smooth_field(rng, lowres, 6.0), spec.tissue_fraction)
    tissue = ndi.binary_opening(tissue, iterations=2)
    cells_per_tile = 64.0 / (LOWRES_STEP * spec.mpp)  # a demo tile is 64 um
    radius = (spec.blob_sd_tiles[0] * cells_per_tile, spec.blob_sd_tiles[1] * cells_per_tile)
    tumour = np.zeros(lowres, bool)
    if positive:
        frac = rng.uniform(*spec.tumour_fraction)
        tumour = _blobs(rng, tissue, frac, radius, max(1, int(np.ceil(frac / spec.tumour_per_blob))))
    mimic = np.zeros(lowres, bool)
    if rng.random() < spec.mimic_probability[int(positive)]:
        free = tissue & ~ndi.binary_dilation(tumour, iterations=2)
        frac = rng.uniform(*spec.mimic_fraction) * tissue.sum() / max(free.sum(), 1)
        mimic = _blobs(rng, free, frac, radius, int(rng.integers(spec.blobs[0], spec.blobs[1] + 1)))
    rest = tissue & ~tumour & ~mimic
    lobule = _threshold_for_fraction(_smooth_field(rng, lowres, 3.0), rng.uniform(*spec.lobule_fraction) * tissue.sum() / max(rest.sum(), 1), rest)
    return tissue, tumour, mimic, lobule


def render(slide_seed: int, positive: bool, spec: DemoSlideSpec = DemoSlideSpec()) -> DemoRender:
    """Render one slide (see the module docstring for what is drawn)."""
    rng = np.random.default_rng(slide_seed)
    up = int(round(spec.render_mpp / spec.mpp)) if spec.render_mpp > spec.mpp else 1
    H0, W0 = spec.height, spec.width
    lowres = (H0 // LOWRES_STEP, W0 // LOWRES_STEP)
    H, W = -(-H0 // up), -(-W0 // up)  # render grid
    tissue_lr, tumour_lr, mimic_lr, lobule_lr = _regions(rng, spec, positive, lowres)
    tissue, tumour, mimic, lobule = (_upsample(m, (H, W)) for m in (tissue_lr, tumour_lr, mimic_lr, lobule_lr))
    stroma = tissue & ~tumour & ~mimic & ~lobule

    # patient: nuclear size and density scales; stroma: eosin fibres in two directions
    size_scale = rng.uniform(0.8, 1.25)
    # mimic nuclei vary a little; tumours range from vesicular to hyperchromatic and, by grade, from nuclei
    # barely larger than a mimic's to twice its size: a random-feature encoder finds only the high-grade ones
    mimic_style = replace(MIMIC_GLAND, size=MIMIC_GLAND.size * rng.uniform(*spec.mimic_size))
    mimic_style = replace(mimic_style, nuc_gap=mimic_style.nuc_gap * mimic_style.size / MIMIC_GLAND.size,
                          fill_density=mimic_style.fill_density * (MIMIC_GLAND.size / mimic_style.size) ** 2)
    tumour_style = replace(TUMOUR_GLAND, vesicular=rng.uniform(*spec.tumour_vesicular))
    tumour_style = replace(tumour_style, size=tumour_style.size * rng.uniform(*spec.tumour_size))
    w = 1 / (1 + np.exp(-3 * _smooth_field(rng, (H // 8, W // 8), 4.0)))  # soft blend of two directions
    w = ndi.zoom(w, (H / w.shape[0], W / w.shape[1]), order=1, grid_mode=True, mode="nearest")[:H, :W]
    fibres = w > 0.5
    streak = w * _smooth_field(rng, (H, W), (0.7, 5.0)) + (1 - w) * _smooth_field(rng, (H, W), (5.0, 0.7))
    eosin = tissue * (0.34 + 0.07 * streak + 0.04 * _upsample(_smooth_field(rng, (H // 16, W // 16), 3.0), (H, W)))
    # epithelium (glands, tumour, mimic) has paler, slightly basophilic cytoplasm
    epi = tumour | mimic | lobule
    eosin = np.where(epi, 0.24 + 0.03 * _smooth_field(rng, (H, W), 1.5), eosin).astype(np.float32)
    haem = np.where(tumour | mimic, 0.10, np.where(lobule, 0.05, 0.03)).astype(np.float32) * tissue

    lumen = np.zeros((H, W), bool)
    parts = [
        _glands(rng, lobule, _lerp_style(NORMAL_GLAND, MIMIC_GLAND, rng.uniform(*spec.lobule_crowding)), size_scale, lumen),
        _glands(rng, tumour, tumour_style, size_scale, lumen),
        _glands(rng, mimic, mimic_style, size_scale, lumen),
    ]
    # stroma: spindle fibroblasts along the fibres and scattered round lymphocytes
    sy, sx = _scatter(rng, stroma, 0.0016 * rng.uniform(0.7, 1.3))
    n = sy.size
    along = np.where(fibres[sy.astype(int), sx.astype(int)], 0.0, np.pi / 2) + rng.normal(0, 0.15, n)
    parts.append(_nuclei(sy, sx, 4.5 * size_scale, 1.3, along, 0.8 * rng.uniform(0.8, 1.1, n)))
    ly, lx = _scatter(rng, tissue & ~epi, 0.0008 * rng.uniform(0.5, 1.5))
    parts.append(_nuclei(ly, lx, 2.1 * size_scale, 2.0, 0.0, 1.0))
    _stamp(haem, Nuclei.cat(parts), rng)
    eosin[lumen] *= 0.12
    haem[lumen] *= 0.2
    haem = ndi.gaussian_filter(haem, 0.6)

    # per-slide stain (hue and intensity), as between scanners and labs
    h_vec = _H_OD * rng.uniform(0.75, 1.25, 3)
    e_vec = _E_OD * rng.uniform(0.75, 1.25, 3)
    intensity = rng.uniform(0.75, 1.3)
    rgb = np.empty((H, W, 3), np.uint8)
    for c in range(3):  # per channel keeps float temporaries at one plane
        od = intensity * (haem * np.float32(h_vec[c]) + eosin * np.float32(e_vec[c]))
        plane = 244.0 * np.exp(-od) + 3.0 * rng.standard_normal((H, W), dtype=np.float32)
        rgb[..., c] = np.clip(plane, 0, 255)
    if up > 1:
        rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)[:H0, :W0]
    return DemoRender(rgb, tumour_lr, mimic_lr, tissue_lr, LOWRES_STEP)


def render_slide(slide_seed: int, positive: bool, spec: DemoSlideSpec = DemoSlideSpec()):
    """Render one slide. Returns (rgb uint8 [H,W,3], tumour mask at low res, low-res scale)."""
    r = render(slide_seed, positive, spec)
    return r.rgb, r.tumour_lr, r.scale


def regions_geojson(region_lr: np.ndarray, scale: int, classification: str = "tumour") -> dict:
    """Outlines of a low-res region map as a GeoJSON FeatureCollection in level-0 pixel coordinates."""
    from skimage import measure

    features = []
    padded = np.pad(region_lr.astype(np.float32), 1)
    for contour in measure.find_contours(padded, 0.5):
        ring = [[float((x - 1 + 0.5) * scale), float((y - 1 + 0.5) * scale)] for y, x in contour]
        if len(ring) < 4:
            continue
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        features.append({"type": "Feature", "properties": {"classification": classification},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": features}


def tumour_geojson(tumour_lr: np.ndarray, scale: int) -> dict:
    """Tumour outlines as a GeoJSON FeatureCollection in level-0 pixel coordinates."""
    return regions_geojson(tumour_lr, scale, "tumour")


def write_pyramidal_tiff(rgb: np.ndarray, path: Path, mpp: float, tile_size: int = 256, quality: int = 85) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF with resolution tags that OpenSlide reads."""
    import pyvips

    img = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb")
    px_per_mm = 1000.0 / mpp
    with atomic_path(path) as tmp:
        img.tiffsave(str(tmp), tile=True, tile_width=tile_size, tile_height=tile_size, pyramid=True,
                     compression="jpeg", Q=quality, xres=px_per_mm, yres=px_per_mm, resunit="cm")


def mimic_path(annotation_path: str | Path) -> Path:
    """Where the mimic GeoJSON of a slide goes: beside its tumour GeoJSON, `{slide}.mimic.geojson`."""
    p = Path(annotation_path)
    return p.with_name(p.name.removesuffix(".geojson") + ".mimic.geojson")


def slide_seed(seed: int, slide_id: str) -> int:
    """A stable per-slide seed from the cohort seed and the slide id."""
    return int(np.random.SeedSequence([seed, *slide_id.encode()]).generate_state(1)[0])


def _write_json(obj: dict, path: Path) -> None:
    write_text(json.dumps(obj), path)


def make_demo_slide(slide_id: str, label: int, seed: int, slide_path: Path, annotation_path: Path,
                    spec: DemoSlideSpec = DemoSlideSpec(), mimic_annotation_path: Path | None = None) -> None:
    """Render and write one demo slide, its tumour GeoJSON and its mimic GeoJSON.

    The mimic GeoJSON (features classified "mimic", possibly none) goes to `mimic_annotation_path`,
    by default `mimic_path(annotation_path)`.
    """
    r = render(slide_seed(seed, slide_id), bool(label), spec)
    write_pyramidal_tiff(r.rgb, Path(slide_path), spec.mpp, spec.tile_size, spec.jpeg_quality)
    _write_json(tumour_geojson(r.tumour_lr, r.scale), Path(annotation_path))
    mimic_out = Path(mimic_annotation_path) if mimic_annotation_path else mimic_path(annotation_path)
    _write_json(regions_geojson(r.mimic_lr, r.scale, "mimic"), mimic_out)
