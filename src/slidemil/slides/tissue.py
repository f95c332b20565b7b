"""Tissue masks from a slide thumbnail: saturation/Otsu, ink and background exclusion, cleanup."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from slidemil.config import TissueParams


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    d = np.maximum(delta, 1e-6)
    h = np.select([mx == r, mx == g], [((g - b) / d) % 6, (b - r) / d + 2], (r - g) / d + 4) * 60.0
    return np.where(delta > 0, h, 0.0), s, mx


def ink_mask(rgb: np.ndarray, params: TissueParams = TissueParams()) -> np.ndarray:
    """Marker ink. Blue and green: saturated hues that H&E never produces (H&E is pink to purple).
    Black: very dark and greyish (ink over tissue keeps some of the stain's tint), or darker than
    `min_value` whatever its colour; H&E's darkest (dense nuclei) stays a saturated purple.
    """
    h, s, v = _rgb_to_hsv(rgb)
    green = (h >= 70) & (h < 170) & (s > 0.15)
    blue = (h >= 170) & (h < 235) & (s > 0.25)
    black = (v < params.min_value) | ((v < params.black_ink_value) & (s < params.black_ink_saturation))
    return ((green | blue) & (v > 0.05)) | black


def sharpness(rgb: np.ndarray, window_px: int) -> np.ndarray:
    """Local variance of the Laplacian of the grey image (0-1) over `window_px` squares [H, W].

    Focus blur removes the fine detail the Laplacian responds to; glass is smooth too, but glass
    is excluded by brightness before this matters. At a mask resolution of ~8 um/px this sees
    gross blur (wider than a mask pixel), not fine focus errors that only tile-level checks see.
    """
    grey = rgb.astype(np.float32).mean(axis=-1) / 255.0
    lap = ndi.laplace(grey)
    m = ndi.uniform_filter(lap, window_px)
    m2 = ndi.uniform_filter(lap * lap, window_px)
    return np.maximum(m2 - m * m, 0.0)


def blur_mask(rgb: np.ndarray, um_per_px: float, params: TissueParams = TissueParams(),
              within: np.ndarray | None = None) -> np.ndarray:
    """Blurry regions: sharpness below `min_sharpness`, in connected patches >= `min_blur_um2`."""
    window = max(3, round(params.blur_window_um / um_per_px))
    blurry = sharpness(rgb, window) < params.min_sharpness
    if within is not None:
        blurry &= within
    lab, n = ndi.label(blurry)
    if not n:
        return blurry
    sizes = ndi.sum_labels(blurry, lab, index=np.arange(1, n + 1)) * um_per_px**2
    return np.isin(lab, np.flatnonzero(sizes >= params.min_blur_um2) + 1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample in [0, 1]; 1.0 when the sample is constant."""
    if values.size == 0 or np.ptp(values) < 1e-6:
        return 1.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(centres[np.nanargmax(between)])


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def tissue_mask(rgb: np.ndarray, um_per_px: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are `um_per_px` microns wide."""
    return tissue_parts(rgb, um_per_px, params)["tissue"]


def tissue_parts(rgb: np.ndarray, um_per_px: float, params: TissueParams = TissueParams()) -> dict[str, np.ndarray]:
    """Boolean maps [H, W] of `tissue` (the mask) and of what was excluded as `ink` and `blur`."""
    h, s, v = _rgb_to_hsv(rgb)
    candidate = (v < params.max_value) & (v > params.min_value)
    sat_cut = max(params.min_saturation, otsu_threshold(s[candidate]) if candidate.any() else 1.0)
    # Otsu on a slide that is mostly tissue can split tissue in two; never cut above a pale-pink level
    sat_cut = min(sat_cut, 0.25)
    mask = candidate & (s >= sat_cut)
    ink = ink_mask(rgb, params) if params.exclude_ink else np.zeros_like(mask)
    mask &= ~ink
    blur = blur_mask(rgb, um_per_px, params, within=mask) if params.exclude_blur else np.zeros_like(mask)
    mask &= ~blur  # before closing and hole filling: a blurred patch is a large hole, so it stays open
    radius = max(1, round(params.close_radius_um / um_per_px))
    mask = ndi.binary_closing(mask, structure=_disc(radius), border_value=0)
    px_area = um_per_px**2
    # fill holes that are small; large holes (e.g. a lumen or a tear) stay background
    holes = ndi.binary_fill_holes(mask) & ~mask
    lab, n = ndi.label(holes)
    if n:
        sizes = ndi.sum_labels(holes, lab, index=np.arange(1, n + 1)) * px_area
        mask |= np.isin(lab, np.flatnonzero(sizes <= params.max_hole_um2) + 1)
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum_labels(mask, lab, index=np.arange(1, n + 1)) * px_area
        mask = np.isin(lab, np.flatnonzero(sizes >= params.min_object_um2) + 1)
    if params.exclude_ink:
        ink = ndi.binary_dilation(ink, iterations=1)
        mask &= ~ink
    return {"tissue": mask, "ink": ink & (v < params.max_value), "blur": blur}


def mask_slide(slide_path, out_png, qc_png, params: TissueParams, mask_mpp: float = 8.0,
               mpp_override: float | None = None, max_side: int = 4096) -> dict:
    """Tissue mask of one slide at ~`mask_mpp`: mask PNG + JSON sidecar + QC picture PNG.

    The QC picture is a ~1000 px thumbnail (slidemil.slides.qcpicture): from the mask's thumbnail when
    that is larger, else read from the pyramid level nearest its size, never level 0 whole.
    """
    import json
    from pathlib import Path

    from PIL import Image

    from slidemil.files import save_png, write_text
    from slidemil.slides.qcpicture import mask_picture, panel_long_side
    from slidemil.slides.slide import open_slide, read_thumbnail, slide_mpp

    slide = open_slide(slide_path)
    mpp = slide_mpp(slide, slide_path, mpp_override)
    has_meta_mpp = mpp_override is None or slide.properties.get("openslide.mpp-x") is not None
    w, h = slide.dimensions
    rgb, downsample = read_thumbnail(slide, min(max_side, max(64, round(max(w, h) * mpp / mask_mpp))))
    qc_side = panel_long_side((w, h))
    if max(rgb.shape[:2]) >= qc_side:
        f = qc_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        qc_rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    else:
        qc_rgb, _ = read_thumbnail(slide, qc_side)
    slide.close()
    parts = tissue_parts(rgb, downsample * mpp, params)
    mask = parts["tissue"]
    meta = {"status": "ok" if mask.any() else "empty", "reason": "" if mask.any() else "no tissue found",
            "downsample": downsample, "slide_mpp": mpp, "mpp_source": "metadata" if has_meta_mpp else "samples.tsv",
            "width": w, "height": h, "tissue_fraction": float(mask.mean()),
            "tissue_area_mm2": float(mask.sum() * (downsample * mpp / 1000.0) ** 2),
            "ink_fraction": float(parts["ink"].mean()), "blur_fraction": float(parts["blur"].mean()),
            "qc_size": [qc_rgb.shape[1], qc_rgb.shape[0]], "qc_downsample": w / qc_rgb.shape[1]}
    out_png = Path(out_png)
    title = f"{Path(slide_path).name}: mask at {downsample * mpp:.1f} um/px, {mpp:g} um/px scan"
    save_png(mask_picture(qc_rgb, mask, {"ink": parts["ink"], "blur": parts["blur"]}, meta, title), qc_png)
    write_text(json.dumps(meta, indent=1), out_png.with_suffix(".json"))
    save_png((mask * 255).astype(np.uint8), out_png)  # the rule's output, written last: it implies the sidecar
    return meta


def mask_slide_or_flag(slide_path, slide_id: str, out_png, qc_png, params: TissueParams, mask_mpp: float = 8.0,
                       mpp_override: float | None = None, on_error: str = "fail") -> dict:
    """The mask stage: `mask_slide`, or for a slide that cannot be read, outputs flagged failed.

    on_error 'skip': one ERROR line, then an empty mask, its sidecar (status, reason) and a
    placeholder QC picture; 'fail': the ERROR line, then SlideFailure (the CLI exits 1).
    """
    import logging

    from slidemil.slides.failures import failure_reason, report_failure, slide_read_errors, write_failed_mask

    log = logging.getLogger("slidemil")
    try:
        meta = mask_slide(slide_path, out_png, qc_png, params, mask_mpp=mask_mpp, mpp_override=mpp_override)
    except slide_read_errors() as e:  # a slide problem, not a bug
        reason = failure_reason(e, slide_path)
        report_failure(slide_id, reason, on_error)
        return write_failed_mask(out_png, qc_png, slide_id, reason, slide_path)
    if meta["status"] == "empty":
        log.warning("%s: no tissue found; its tile store will be empty and MIL will skip it", slide_id)
    log.info("%s: tissue %.1f%% of the slide, %.2f mm2", slide_id, 100 * meta["tissue_fraction"],
             meta["tissue_area_mm2"])
    return meta
