"""Hints for zero objects name the filter and the value computed from the candidates."""

from __future__ import annotations

import numpy as np
import pytest
from sam_fakes import disk

from napari_sam_ms.amg_hints import (
    iou_setting_for,
    no_objects_hint,
    score_advice,
    stability_setting_for,
)
from napari_sam_ms.amg_refine import Candidates, iou_keep, refilter_data, stability_keep
from napari_sam_ms.utils.amg import MaskData, batched_mask_to_box, mask_to_rle

SHAPE = (60, 80)


def _candidates(ious, stability, run=None) -> Candidates:
    """One disk per score pair, spread over the image so NMS keeps them apart."""
    n = len(ious)
    masks = np.stack([disk(SHAPE, (15 + 30 * (i % 2), 10 + 15 * (i // 2)), 5) for i in range(n)])
    data = MaskData(
        iou_preds=np.asarray(ious, np.float32),
        stability_score=np.asarray(stability, np.float32),
        boxes=batched_mask_to_box(masks),
        crop_boxes=np.tile([0, 0, SHAPE[1], SHAPE[0]], (n, 1)),
        points=np.zeros((n, 2)),
        rles=mask_to_rle(masks),
    )
    return Candidates(SHAPE, [[0, 0, SHAPE[1], SHAPE[0]]], [data], run or {})


def _kept(cands: Candidates, iou: float, stab: float) -> int:
    return len(refilter_data(cands, pred_iou_thresh=iou, stability_score_thresh=stab))


def test_iou_threshold_above_the_best_names_the_best_score():
    """The issue's case: 'pred iou thresh' already 0.30, the best candidate 0.22 (the old
    hint said to lower it 'e.g. to 0.65')."""
    cands = _candidates([0.22, 0.15, 0.10, 0.05], [0.99, 0.97, 0.99, 0.96])
    assert _kept(cands, 0.30, 0.95) == 0
    hint = no_objects_hint(cands, {"pred_iou_thresh": 0.30, "stability_score_thresh": 0.95})
    assert hint == (
        "0 objects from 4 candidates: lower 'pred iou thresh' from 0.30 to 0.21 "
        "(best predicted IoU 0.22)."
    )
    assert "0.65" not in hint and "stability" not in hint
    assert _kept(cands, 0.21, 0.95) == 1


def test_stability_threshold_above_the_best():
    cands = _candidates([0.95, 0.92, 0.50], [0.85, 0.80, 0.99])
    hint = no_objects_hint(cands, {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95})
    assert hint == (
        "0 objects from 3 candidates: lower 'pred iou thresh' from 0.88 to 0.49 (best "
        "predicted IoU 0.50 among the 1 passing 'stability score thresh'), or lower "
        "'stability score thresh' from 0.95 to 0.85 (best stability score 0.85 among the 2 "
        "passing 'pred iou thresh')."
    )
    assert _kept(cands, 0.49, 0.95) == 1 and _kept(cands, 0.88, 0.85) == 1


def test_only_stability_removes_everything():
    cands = _candidates([0.95, 0.92], [0.85, 0.80])
    hint = no_objects_hint(cands, {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95})
    assert hint == (
        "0 objects from 2 candidates: lower 'stability score thresh' from 0.95 to 0.85 "
        "(best stability score 0.85)."
    )


def test_both_filters_must_be_lowered():
    cands = _candidates([0.50, 0.70, 0.80], [0.60, 0.90, 0.30])
    settings = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
    hint = no_objects_hint(cands, settings)
    assert hint == (
        "0 objects from 3 candidates: lower 'pred iou thresh' from 0.88 to 0.69 and "
        "'stability score thresh' from 0.95 to 0.90 (the best candidate: predicted IoU 0.70, "
        "stability score 0.90)."
    )
    assert _kept(cands, 0.69, 0.90) == 1


def test_meta_defaults_are_used_for_missing_settings():
    cands = _candidates([0.80], [0.99])
    assert "from 0.88 to 0.79" in no_objects_hint(cands, {})


def test_no_advice_when_something_passes():
    cands = _candidates([0.95, 0.20], [0.99, 0.99])
    assert score_advice(cands, 0.88, 0.95) == []


def test_no_candidates_and_polarity():
    cands = Candidates(SHAPE, [[0, 0, SHAPE[1], SHAPE[0]]], [], {"points_per_side": 16})
    assert no_objects_hint(cands, {}) == (
        "0 objects: the model proposed no mask: raise 'points per side' from 16 or add crop layers."
    )
    hint = no_objects_hint(
        _candidates([0.3], [0.99]), {"pred_iou_thresh": 0.5}, dark_on_bright=True
    )
    assert hint.startswith(
        "0 objects from 1 candidate: tick 'invert' and Run again (the image looks dark on "
        "bright), or lower 'pred iou thresh' from 0.50 to 0.29"
    )


def test_filter_settings_are_checked():
    with pytest.raises(ValueError, match="points_per_side"):
        no_objects_hint(_candidates([0.3], [0.9]), {"points_per_side": 8})


@pytest.mark.parametrize("best", [0.0001, 0.22, 0.2199, 0.85, 0.3, 0.5, 0.999, 1.0])
def test_suggested_values_let_the_best_through_and_are_the_largest(best):
    b = np.array([best], np.float32)
    v = iou_setting_for(float(b[0]))
    assert round(v * 100) == pytest.approx(v * 100)
    if v > 0:
        assert iou_keep(b, v)[0] and not iou_keep(b, v + 0.01)[0]
    s = stability_setting_for(float(b[0]))
    assert stability_keep(b, s)[0] and not stability_keep(b, s + 0.01)[0]


def test_random_scores_every_suggestion_keeps_an_object():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 6))
        ious, stab = rng.uniform(0.1, 0.99, n), rng.uniform(0.1, 0.99, n)
        cands = _candidates(ious, stab)
        ti, ts = rng.uniform(0.5, 1.0, 2)
        if _kept(cands, ti, ts):
            continue
        ious32, stab32 = ious.astype(np.float32), stab.astype(np.float32)
        for item in score_advice(cands, ti, ts):
            values = [float(w) for w in item.replace(")", " ").split() if _is_number(w)]
            if " and 'stability" in item:  # both: "... to V1 and ... to V2 (...)"
                new_i, new_s = values[1], values[3]
            elif item.startswith("lower 'pred"):
                new_i, new_s = values[1], ts
            else:
                new_i, new_s = ti, values[1]
            assert (iou_keep(ious32, new_i) & stability_keep(stab32, new_s)).any(), item
            assert _kept(cands, new_i, new_s) >= 1, item


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True
