"""Re-filtering cached whole-image candidates equals running the generator directly."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.amg_refine import refilter, refilter_labels, with_filter_defaults
from napari_sam_ms.automatic_mask_generator import (
    GenerationCancelled,
    SamAutomaticMaskGenerator,
    collect_candidates,
)
from napari_sam_ms.build_sam import sam_model_registry
from napari_sam_ms.progress import Cancelled
from napari_sam_ms.utils.labels import masks_to_labels


@pytest.fixture(scope="module")
def model():
    import mindspore as ms

    ms.set_seed(0)
    return sam_model_registry["tiny"]()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:72, :90]
    img = 40 + 20 * rng.random((72, 90))
    for cy, cx, r in [(20, 20, 9), (50, 60, 14), (30, 70, 6)]:
        img += 150 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def memo_model(monkeypatch):
    """Memoise the (deterministic) model per image and prompts, so the direct runs that the
    re-filtered results are compared with cost no extra model time."""
    from napari_sam_ms.predictor import SamPredictor

    embeds: dict = {}
    decodes: dict = {}
    set_image, predict = SamPredictor.set_image, SamPredictor.predict_transformed

    def memo_set_image(self, image, *args, **kwargs):
        key = (np.asarray(image).tobytes(), np.asarray(image).shape)
        if key not in embeds:
            set_image(self, image, *args, **kwargs)
            embeds[key] = (self.features, self.original_size, self.input_size)
        self._set_state(*embeds[key])
        self._memo_key = key

    def memo_predict(self, coords, labels, *args, **kwargs):
        key = (
            self._memo_key,
            np.asarray(coords).tobytes(),
            np.asarray(labels).tobytes(),
            repr(args),
            repr(sorted(kwargs.items())),
        )
        if key not in decodes:
            decodes[key] = predict(self, coords, labels, *args, **kwargs)
        return decodes[key]

    monkeypatch.setattr(SamPredictor, "set_image", memo_set_image)
    monkeypatch.setattr(SamPredictor, "predict_transformed", memo_predict)


def _same(direct, refined):
    assert len(direct) == len(refined)
    for a, b in zip(direct, refined, strict=True):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"]
        assert a["crop_box"] == b["crop_box"]
        assert np.float32(a["predicted_iou"]) == np.float32(b["predicted_iou"])


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_refilter_equals_direct_run(model, image, crop_n_layers):
    run = dict(points_per_side=6, points_per_batch=64, crop_n_layers=crop_n_layers)
    if crop_n_layers:
        run["crop_n_points_downscale_factor"] = 2
    cands = collect_candidates(model, image, **run)
    for box, crop in zip(cands.crop_boxes, cands.crops, strict=True):  # each keeps its crop
        assert (crop["crop_boxes"] == np.asarray(box)).all()
    before = [(list(c["rles"]), c["boxes"].copy()) for c in cands.crops]
    ious = np.concatenate([c["iou_preds"] for c in cands.crops])
    stab = np.concatenate([c["stability_score"] for c in cands.crops])
    assert len(cands) > 20
    settings = [
        dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7),
        dict(
            pred_iou_thresh=float(np.quantile(ious, 0.3)),
            stability_score_thresh=float(np.nanquantile(stab, 0.3)),
            box_nms_thresh=0.5,
            crop_nms_thresh=0.6,
        ),
        dict(pred_iou_thresh=float(np.quantile(ious, 0.2)), min_mask_region_area=30),
        dict(pred_iou_thresh=0.0, box_nms_thresh=1.0, mask_overlap_thresh=0.3),
        dict(
            pred_iou_thresh=0.0,
            box_nms_thresh=0.9,
            mask_overlap_thresh=0.5,
            min_mask_region_area=30,
        ),
    ]
    for flt in settings:
        flt = {**dict(stability_score_thresh=0.0), **flt}
        direct = SamAutomaticMaskGenerator(model, **run, **flt).generate(image)
        refined = refilter(cands, **flt)
        assert len(direct) > 0
        _same(direct, refined)
        np.testing.assert_array_equal(
            refilter_labels(cands, **flt), masks_to_labels(direct, image.shape)
        )
    for (rles, boxes), crop in zip(before, cands.crops, strict=True):  # the cache is untouched
        assert crop["rles"] == rles and (crop["boxes"] == boxes).all()


def test_mask_overlap_filter_drops_covered_masks(model, image):
    """On real candidates the overlap filter drops masks, never a mask that lies mostly
    outside those kept before it, and 1.0 leaves the candidates as they were."""
    from napari_sam_ms.amg_refine import overlap_keep
    from napari_sam_ms.utils.amg import rle_to_mask

    cands = collect_candidates(model, image, points_per_side=6)
    data = cands.crops[0]
    keep = overlap_keep(data, 0.3)
    assert 0 < keep.sum() < len(keep)
    assert overlap_keep(data, 1.0).all()
    scores = data["iou_preds"] * data["stability_score"]
    taken = np.zeros(cands.shape, bool)
    for i in np.argsort(-scores, kind="stable"):
        mask = rle_to_mask(data["rles"][i])
        covered = np.count_nonzero(mask & taken) / max(1, np.count_nonzero(mask))
        assert keep[i] == (mask.any() and covered <= 0.3)
        if keep[i]:
            taken |= mask


def test_mask_overlap_keep_separates_touching_objects():
    from napari_sam_ms.amg_refine import mask_overlap_keep
    from napari_sam_ms.utils.amg import batched_mask_to_box, mask_to_rle, nms

    a = np.zeros((20, 30), bool)
    a[2:12, 2:14] = True
    b = np.zeros_like(a)
    b[6:16, 14:26] = True  # touches a along a column
    merged = a | b  # one mask over both objects
    part = np.zeros_like(a)
    part[3:8, 3:8] = True  # lies inside a
    empty = np.zeros_like(a)
    masks = np.stack([merged, a, part, b, empty])
    scores = np.array([0.5, 0.9, 0.4, 0.8, 0.95])
    rles, boxes = mask_to_rle(masks), batched_mask_to_box(masks)
    keep = mask_overlap_keep(rles, boxes, scores, 0.25)
    # a and b stay (ranked first, disjoint); the merged mask and the part are dropped
    assert keep.tolist() == [False, True, False, True, False]
    assert mask_overlap_keep(rles, boxes, scores, 1.0).all()
    # box NMS that drops the merged mask (box IoU 0.33 with a) keeps the part (0.16)
    assert sorted(nms(boxes[:4], scores[:4], 0.2).tolist()) == [1, 2, 3]
    with pytest.raises(ValueError, match="one score and one box per mask"):
        mask_overlap_keep(rles, boxes, scores[:2], 0.25)


def test_rle_window_decodes_only_the_box():
    from napari_sam_ms.utils.amg import mask_to_rle, rle_to_mask

    rng = np.random.default_rng(5)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        mask = rng.random((h, w)) < rng.random()
        rle = mask_to_rle(mask[None])[0]
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        window = rle_to_mask(rle, (x0, y0, x1, y1))
        np.testing.assert_array_equal(window, mask[y0 : y1 + 1, x0 : x1 + 1])
    np.testing.assert_array_equal(rle_to_mask(rle, (0, 0, w - 1, h - 1)), mask)
    with pytest.raises(ValueError, match="not inside"):
        rle_to_mask(rle, (0, 0, w, h - 1))


def test_collect_can_be_cancelled(model, image):
    assert issubclass(GenerationCancelled, Cancelled)
    with pytest.raises(GenerationCancelled):
        collect_candidates(
            model,
            image,
            progress=lambda done, total: done < 1,
            points_per_side=8,
            points_per_batch=16,
        )


def test_settings_of_the_wrong_stage_are_refused(model, image):
    flt = with_filter_defaults({"box_nms_thresh": 0.5})
    assert flt["box_nms_thresh"] == 0.5 and flt["pred_iou_thresh"] == 0.88
    with pytest.raises(ValueError, match="points_per_side: needs a new run"):
        with_filter_defaults({"points_per_side": 8})
    with pytest.raises(ValueError, match="nope"):
        with_filter_defaults({"nope": 1})
    with pytest.raises(ValueError, match="not run settings: box_nms_thresh"):
        collect_candidates(model, image, box_nms_thresh=0.5)


def test_invert_shows_the_model_the_inverted_image(model, image, monkeypatch):
    """``invert=True`` (a run setting, ours) equals a run on ``255 - image``; the image given
    is not changed and the candidates remember the setting."""
    from napari_sam_ms.predictor import SamPredictor

    seen = []
    set_image = SamPredictor.set_image

    def spy(self, img, *args, **kwargs):
        seen.append(np.array(img))
        return set_image(self, img, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "set_image", spy)
    original = image.copy()
    run = dict(points_per_side=4)
    inverted = collect_candidates(model, image, invert=True, **run)
    np.testing.assert_array_equal(seen[-1][..., 0], 255 - image)
    np.testing.assert_array_equal(image, original)
    assert inverted.run_settings["invert"] is True
    plain = collect_candidates(model, 255 - image, **run)
    assert plain.run_settings["invert"] is False
    flt = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    _same(refilter(plain, **flt), refilter(inverted, **flt))
    direct = SamAutomaticMaskGenerator(model, invert=True, **run, **flt).generate(image)
    _same(direct, refilter(inverted, **flt))
