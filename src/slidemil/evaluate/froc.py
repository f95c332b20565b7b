"""Camelyon16 lesion-level FROC from tile (instance) scores.

The Camelyon16 challenge's second metric (Bejnordi et al., JAMA 2017; the organisers'
`Evaluation_FROC.py`) scores lesion detection: a detection is a point with a confidence; it is a
true positive when it falls inside an annotated lesion, each lesion counts once (its highest
confidence), and every detection outside all lesions is a false positive. Sweeping a threshold over
the confidences gives sensitivity (lesions found / lesions) against the mean number of false
positives per slide, averaged over *all* slides, negative slides included. The score is the mean
sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide.

Like the official code, lesions are the connected components (8-connected) of the annotation
mask grown by half of `merge_um` (75 um: lesions closer than about five tumour cells are one
lesion), holes filled; a lesion whose major axis is shorter than `itc_um` + `merge_um` (isolated
tumour cells, < 200 um) is left out: a detection inside it is neither a true nor a false positive
and it does not count towards the lesions. The mask is drawn from the annotation polygons at
`mask_um` per pixel (the official code used the level-5 mask, ~7.8 um per pixel).

Where ours departs from the official evaluation:
- Detections are tile centres (a MIL model scores tiles, not points it chooses), optionally thinned
  to local maxima of the score on the tile grid (`nms_radius` tiles, Chebyshev) so that a blob of
  high-scoring normal tiles costs one false positive rather than one per tile.
- Missed lesions are "never detected" rather than detected at confidence 0, and every distinct
  confidence is an operating point (the official code drops its lowest threshold). Between
  operating points sensitivity is interpolated linearly in the false-positive rate, as the
  official scripts' `np.interp` does; at a rate that is reached exactly, the highest sensitivity
  reached there is taken; beyond the last point it stays at the last sensitivity.
- The resolution is the slide's own mpp (the official code assumed 0.243 um per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from slidemil.config import FrocParams

FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class LesionMask:
    """Lesion labels of one slide: labels int32 [H, W] (0 = no lesion) at `downsample` level-0 px per pixel."""

    labels: np.ndarray
    downsample: float
    itc: frozenset[int]  # labels of isolated tumour cells

    @property
    def lesion_ids(self) -> np.ndarray:
        """Labels that count as lesions (not ITC), ascending [L]."""
        ids = np.arange(1, int(self.labels.max(initial=0)) + 1)
        return ids[~np.isin(ids, list(self.itc))]


@dataclass
class SlideHits:
    """One slide's detections split into false positives and per-lesion best confidences."""

    fp_scores: np.ndarray  # [F] confidences of detections outside every lesion
    lesion_scores: np.ndarray  # [L] highest confidence inside each lesion; nan = missed
    n_itc: int = 0  # lesions left out as isolated tumour cells


def lesion_mask(lesions: Sequence[np.ndarray], holes: Sequence[np.ndarray], width: int, height: int,
                mpp: float, params: FrocParams = FrocParams()) -> LesionMask:
    """Rasterise lesion polygons (level-0 (x, y) vertex arrays [V, 2]) into labelled lesions.

    Holes are cut out before growing and filled after, as in the official mask (exclusion regions
    inside a lesion end up part of it).
    """
    from scipy import ndimage as ndi
    from skimage.draw import polygon as fill_polygon
    from skimage.measure import label, regionprops

    ds = params.mask_um / mpp  # level-0 px per mask px
    shape = (max(1, int(np.ceil(height / ds))), max(1, int(np.ceil(width / ds))))
    mask = np.zeros(shape, bool)
    for polys, value in ((lesions, True), (holes, False)):
        for poly in polys:
            rr, cc = fill_polygon(poly[:, 1] / ds, poly[:, 0] / ds, shape)
            mask[rr, cc] = value
    if not mask.any():
        return LesionMask(np.zeros(shape, np.int32), ds, frozenset())
    grow_px = params.merge_um / 2 / params.mask_um
    grown = ndi.distance_transform_edt(~mask) < grow_px
    labels = label(ndi.binary_fill_holes(grown), connectivity=2).astype(np.int32)
    itc: set[int] = set()
    if params.itc_um is not None:
        limit_px = (params.itc_um + params.merge_um) / params.mask_um
        itc = {r.label for r in regionprops(labels) if r.axis_major_length < limit_px}
    return LesionMask(labels, ds, frozenset(itc))


def local_maxima(grid: np.ndarray, scores: np.ndarray, radius: int) -> np.ndarray:
    """bool [N]: tile i scores at least as high as every tile within `radius` grid steps.

    grid: int [N, 2] (col, row) tile indices; scores: [N]. Radius 0 keeps every tile.
    """
    from scipy import ndimage as ndi

    scores = np.asarray(scores, float)
    if radius <= 0 or len(scores) == 0:
        return np.ones(len(scores), bool)
    grid = np.asarray(grid, int)
    origin = grid.min(0)
    col, row = (grid - origin).T
    dense = np.full((row.max() + 1, col.max() + 1), -np.inf)
    dense[row, col] = scores
    peak = ndi.maximum_filter(dense, size=2 * radius + 1, mode="constant", cval=-np.inf)
    return scores >= peak[row, col]


def match_detections(xy: np.ndarray, scores: np.ndarray, mask: LesionMask | None) -> SlideHits:
    """Split detections (level-0 points [K, 2] (x, y), confidences [K]) into FPs and lesion hits.

    mask None: a lesion-free (negative) slide, where every detection is a false positive.
    """
    scores = np.asarray(scores, float)
    if mask is None:
        return SlideHits(scores.copy(), np.empty(0))
    xy = np.asarray(xy, float)
    h, w = mask.labels.shape
    col = np.floor(xy[:, 0] / mask.downsample).astype(int)
    row = np.floor(xy[:, 1] / mask.downsample).astype(int)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    hit = np.zeros(len(scores), np.int32)
    hit[inside] = mask.labels[row[inside], col[inside]]
    best = np.full(int(mask.labels.max(initial=0)) + 1, np.nan)  # index = label; nan = not hit
    np.fmax.at(best, hit, scores)  # fmax ignores nan: each lesion keeps its highest confidence
    # detections in ITC lesions are neither false positives nor hits (their labels are dropped)
    return SlideHits(scores[hit == 0], best[mask.lesion_ids], len(mask.itc))


def froc_curve(hits: Sequence[SlideHits]) -> pd.DataFrame:
    """Operating points over every distinct confidence, highest first.

    Returns threshold, fps_per_slide, sensitivity [T + 1]; the first row (threshold inf) is (0, 0).
    A detection counts at threshold t when its confidence >= t.
    """
    fp = np.sort(np.concatenate([h.fp_scores for h in hits] or [np.empty(0)]))
    lesion = np.concatenate([h.lesion_scores for h in hits] or [np.empty(0)])
    tp = np.sort(lesion[~np.isnan(lesion)])
    thresholds = np.unique(np.concatenate([fp, tp]))[::-1]
    n_fp = len(fp) - np.searchsorted(fp, thresholds, side="left")
    n_tp = len(tp) - np.searchsorted(tp, thresholds, side="left")
    n_slides, n_lesions = len(hits), len(lesion)
    return pd.DataFrame({
        "threshold": np.r_[np.inf, thresholds],
        "fps_per_slide": np.r_[0, n_fp] / n_slides if n_slides else np.nan,
        "sensitivity": np.r_[0, n_tp] / n_lesions if n_lesions else np.nan,
    })


def sensitivity_at(curve: pd.DataFrame, fp_rate: float) -> float:
    """Sensitivity at `fp_rate` (> 0) false positives per slide, interpolated between operating points."""
    fps = curve["fps_per_slide"].to_numpy(float)
    sens = curve["sensitivity"].to_numpy(float)
    above = np.flatnonzero(fps > fp_rate)
    if not len(above):
        return float(sens[-1])  # the curve ends below this rate: keep its last sensitivity
    j = above[0]
    i = j - 1  # last point at or below the rate: the highest sensitivity reached there
    return float(sens[i] + (sens[j] - sens[i]) * (fp_rate - fps[i]) / (fps[j] - fps[i]))


def froc_summary(hits: Sequence[SlideHits], fp_rates: Sequence[float] = FP_RATES) -> dict[str, float]:
    """n_slides, n_lesions, n_itc, sens_<r>fp at each rate and froc (their mean; nan without lesions)."""
    n_lesions = sum(len(h.lesion_scores) for h in hits)
    row: dict[str, float] = {"n_slides": len(hits), "n_lesions": n_lesions, "n_itc": sum(h.n_itc for h in hits)}
    if not hits or not n_lesions:
        row.update({f"sens_{r:g}fp": np.nan for r in fp_rates}, froc=np.nan)
        return row
    curve = froc_curve(hits)
    sens = [sensitivity_at(curve, r) for r in fp_rates]
    row.update({f"sens_{r:g}fp": s for r, s in zip(fp_rates, sens)}, froc=float(np.mean(sens)))
    return row


def detection_confidence(instance_scores: np.ndarray, slide_prob: float) -> np.ndarray:
    """Tile confidence [N] comparable across slides: slide probability x min-max scaled instance score.

    Attention weights sum to one within a slide, so their scale depends on the tile count and
    cannot be thresholded across slides; the FROC pools thresholds over slides. A slide whose
    scores are all equal gives every tile the slide probability.
    """
    s = np.asarray(instance_scores, float)
    if not len(s):
        return s
    span = s.max() - s.min()
    scaled = (s - s.min()) / span if span > 0 else np.ones_like(s)
    return float(slide_prob) * scaled
