"""Camelyon16 lesion-level FROC on hand-made cases with known answers, and against the official recipe."""

import numpy as np
import pytest

from slidemil.evaluate.froc import (FrocParams, SlideHits, detection_confidence, froc_curve, froc_summary,
                           lesion_mask, local_maxima, match_detections, sensitivity_at)

MPP = 1.0  # level-0 px = 1 um, so the polygons below read in microns
NO_ITC = FrocParams(itc_um=None)


def square(x: float, y: float, side: float) -> np.ndarray:
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]], float)


def test_close_lesions_merge_and_far_ones_stay_apart():
    # gap 40 um < 75 um: one lesion; gap 200 um: a second one
    mask = lesion_mask([square(0, 0, 300), square(340, 0, 300), square(0, 500, 300)], [], 2000, 2000, MPP, NO_ITC)
    assert len(mask.lesion_ids) == 2


def test_small_lesions_are_itc_and_neither_hit_nor_false_positive():
    mask = lesion_mask([square(0, 0, 400), square(1000, 1000, 100)], [], 2000, 2000, MPP)
    assert len(mask.lesion_ids) == 1 and len(mask.itc) == 1
    # detection in the big lesion (0.5), in the ITC (0.9), outside both (0.2)
    hits = match_detections(np.array([[200, 200], [1050, 1050], [1500, 200]]), np.array([0.5, 0.9, 0.2]), mask)
    assert hits.fp_scores.tolist() == [0.2] and hits.lesion_scores.tolist() == [0.5]
    # the ITC keeps its 0.9 out of the FROC: one lesion, found at 0.5
    assert (froc_summary([hits])["n_lesions"], froc_summary([hits])["n_itc"]) == (1, 1)


def test_each_lesion_counts_once_with_its_highest_score():
    mask = lesion_mask([square(0, 0, 400), square(1000, 0, 400), square(0, 1000, 400)], [], 2000, 2000, MPP, NO_ITC)
    xy = np.array([[100, 100], [300, 300], [1200, 200], [1700, 1700]])
    hits = match_detections(xy, np.array([0.4, 0.9, 0.3, 0.8]), mask)
    assert sorted(hits.lesion_scores[~np.isnan(hits.lesion_scores)].tolist()) == [0.3, 0.9]
    assert np.isnan(hits.lesion_scores).sum() == 1  # the third lesion is missed
    assert hits.fp_scores.tolist() == [0.8]  # a second detection in a lesion is no false positive


def test_holes_are_filled_like_the_official_mask():
    mask = lesion_mask([square(0, 0, 600)], [square(200, 200, 200)], 1000, 1000, MPP, NO_ITC)
    hits = match_detections(np.array([[300, 300]]), np.array([0.7]), mask)
    assert hits.lesion_scores.tolist() == [0.7] and not len(hits.fp_scores)


def test_negative_slide_detections_are_all_false_positives():
    hits = match_detections(np.zeros((3, 2)), np.array([0.1, 0.2, 0.3]), None)
    assert hits.fp_scores.tolist() == [0.1, 0.2, 0.3] and not len(hits.lesion_scores)


def test_froc_step_curve_known_answer():
    # tumour slide: lesions found at 0.9 and 0.6, one missed; FPs 0.8, 0.3. Normal slide: FPs 0.7, 0.5.
    hits = [SlideHits(np.array([0.8, 0.3]), np.array([0.9, 0.6, np.nan])), SlideHits(np.array([0.7, 0.5]), np.empty(0))]
    curve = froc_curve(hits)
    assert curve["fps_per_slide"].tolist() == [0, 0, 0.5, 1, 1, 1.5, 2]
    assert curve["sensitivity"].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    row = froc_summary(hits)
    # 1/4 and 1/2 FP: 1/3; at exactly 1 FP the best reached there (2/3); beyond the curve: 2/3
    assert [row[k] for k in ("sens_0.25fp", "sens_0.5fp", "sens_1fp", "sens_2fp", "sens_4fp", "sens_8fp")] == \
        pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert row["froc"] == pytest.approx(5 / 9)
    assert row["n_slides"] == 2 and row["n_lesions"] == 3


def test_froc_interpolates_linearly_between_operating_points():
    # a lesion and a false positive share confidence 0.6: the curve goes (0, 1/2) -> (1, 1)
    hits = [SlideHits(np.array([0.6]), np.array([0.9, 0.6]))]
    curve = froc_curve(hits)
    assert sensitivity_at(curve, 0.25) == pytest.approx(0.625)
    assert sensitivity_at(curve, 0.5) == pytest.approx(0.75)
    assert froc_summary(hits)["froc"] == pytest.approx((0.625 + 0.75 + 4 * 1.0) / 6)


def test_no_lesions_gives_nan_not_a_number_that_looks_real():
    row = froc_summary([SlideHits(np.array([0.5]), np.empty(0))])
    assert np.isnan(row["froc"]) and row["n_lesions"] == 0


def _official_recipe(hits: list[SlideHits], rates=(0.25, 0.5, 1, 2, 4, 8)) -> float:
    """The organisers' computeFROC + the usual np.interp score: missed lesions at probability 0, the
    lowest distinct probability dropped as a threshold, (0, 0) appended."""
    fps = np.concatenate([h.fp_scores for h in hits])
    tps = np.nan_to_num(np.concatenate([h.lesion_scores for h in hits]), nan=0.0)
    probs = sorted(set(fps) | set(tps))
    total_fp = [(fps >= t).sum() for t in probs[1:]] + [0]
    total_tp = [(tps >= t).sum() for t in probs[1:]] + [0]
    fp_rate = np.asarray(total_fp) / len(hits)
    sens = np.asarray(total_tp) / len(tps)
    return float(np.mean(np.interp(rates, fp_rate[::-1], sens[::-1])))


def test_matches_the_official_recipe_on_random_detections():
    rng = np.random.default_rng(3)
    hits = []
    for i in range(7):
        lesions = rng.uniform(0.2, 1.0, rng.integers(0, 4)) if i % 2 else np.empty(0)
        if i == 1:
            lesions = np.r_[lesions, np.nan]  # a missed lesion, as the official recipe assumes one
        hits.append(SlideHits(rng.uniform(0.01, 0.95, 40), lesions))
    assert froc_summary(hits)["froc"] == pytest.approx(_official_recipe(hits))


def test_local_maxima_keep_one_detection_per_blob():
    grid = np.array([[c, r] for r in range(5) for c in range(5)])
    scores = np.zeros(25)
    scores[[6, 7, 11, 12]] = [0.5, 0.6, 0.4, 0.9]  # a blob around (2, 2)
    scores[24] = 0.3  # a lone peak in the corner, 2 tiles from the blob
    keep = local_maxima(grid, scores, radius=1)
    assert set(np.flatnonzero(keep & (scores > 0))) == {12, 24}
    assert local_maxima(grid, scores, radius=0).all()
    assert set(np.flatnonzero(local_maxima(grid, scores, radius=3) & (scores > 0))) == {12}


def test_detection_confidence_is_comparable_across_slides():
    # a slide with fewer tiles has larger attention weights; the slide probability decides instead
    few = detection_confidence(np.array([0.5, 0.3, 0.2]), 0.1)
    many = detection_confidence(np.full(100, 0.005) + np.r_[0.1, np.zeros(99)], 0.9)
    assert few.max() == pytest.approx(0.1) and many.max() == pytest.approx(0.9)
    assert detection_confidence(np.ones(4), 0.7).tolist() == pytest.approx([0.7] * 4)
