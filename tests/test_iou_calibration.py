"""IoU-head calibration for whole-image mode (tiny model, CPU)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from napari_sam_ms import runtime
from napari_sam_ms.build_sam import build_sam_from_checkpoint
from napari_sam_ms.predictor import SamPredictor
from napari_sam_ms.training import iou_calibration as cal
from napari_sam_ms.training import synthetic
from napari_sam_ms.weights.checkpoint import save_checkpoint

runtime.configure()

SIZE = 128  # the tiny model's input


def _tiny(seed: int = 0):
    from napari_sam_ms.build_sam import sam_model_registry

    ms.set_seed(seed)
    return sam_model_registry["tiny"]()


def _samples(n: int, start: int):
    data = synthetic.SyntheticDataset(n, "nuclei", start, shape=(SIZE, SIZE))
    return [(s.image, s.labels) for s in data]


def test_target_ious_by_hand():
    labels = np.zeros((8, 8), np.int32)
    labels[0:4, 0:4] = 3  # 16 pixels
    labels[4:8, 4:6] = 7  # 8 pixels
    masks = np.zeros((5, 8, 8), bool)
    masks[0] = labels == 3  # exactly object 3
    masks[1, 0:4, 0:2] = True  # half of object 3
    masks[2] = labels > 0  # both objects: 16 / 24 with object 3
    masks[3, 4:8, 0:4] = True  # background only
    # masks[4] stays empty
    # prompts on background: the best IoU with any object
    np.testing.assert_allclose(
        cal.target_ious(masks[None], labels)[0], [1.0, 0.5, 16 / 24, 0.0, 0.0]
    )
    # a prompt on object 7: the IoU with object 7, even where another object fits better
    on7 = cal.target_ious(masks[None], labels, owners=np.array([7]))[0]
    np.testing.assert_allclose(on7, [0.0, 0.0, 8 / 24, 0.0, 0.0])
    on3 = cal.target_ious(masks[None], labels, owners=np.array([3]))[0]
    np.testing.assert_allclose(on3, [1.0, 0.5, 16 / 24, 0.0, 0.0])
    # a label image without background: every pixel belongs to an object
    full = np.ones((8, 8), np.int32)
    np.testing.assert_allclose(cal.target_ious(masks[None, :1], full)[0], [16 / 64])


@pytest.fixture(scope="module")
def examples_and_model():
    model = _tiny()
    samples = _samples(2, 1000)
    examples = cal.collect_examples(model, samples, points_per_side=4, seed=1)
    return model, samples, examples


def test_examples_are_the_predictors_masks_and_scores(examples_and_model):
    """Each target is target_ious of the masks the predictor gives for that grid point,
    and the IoU head on each feature row gives the predictor's IoU prediction."""
    model, samples, ex = examples_and_model
    assert ex.features.shape == (32, model.mask_decoder.transformer_dim)
    assert ex.targets.shape == (32, 4) and ex.points.shape == (32, 2)
    assert ex.targets.min() >= 0.0 and ex.targets.max() <= 1.0
    predictor = SamPredictor(model)
    head = model.mask_decoder.iou_prediction_head
    seen = []
    for i, (image, labels) in enumerate(samples):
        rows = slice(16 * i, 16 * (i + 1))
        predictor.set_image(image)
        pts = ex.points[rows][:, None, :]
        ones = np.ones(pts.shape[:2], np.int32)
        multi, multi_iou, _ = predictor.predict_batch(pts, ones, multimask_output=True)
        single, single_iou, _ = predictor.predict_batch(pts, ones, multimask_output=False)
        pts_px = ex.points[rows].astype(int)
        owners = labels[pts_px[:, 1], pts_px[:, 0]]
        seen.extend(owners > 0)
        want = cal.target_ious(np.concatenate([single, multi], 1), labels, owners)
        np.testing.assert_allclose(ex.targets[rows], want, atol=1e-6)
        scores = head(ms.Tensor(ex.features[rows])).asnumpy()
        np.testing.assert_allclose(scores[:, 1:], multi_iou, atol=1e-5)
        np.testing.assert_allclose(scores[:, :1], single_iou, atol=1e-5)
    assert any(seen) and not all(seen)  # prompts on objects and on background


def test_fit_lowers_held_out_error_and_touches_only_the_iou_head(tmp_path):
    model = _tiny()
    examples = cal.collect_examples(model, _samples(3, 2000), points_per_side=6, seed=2)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    figures = cal.fit_iou_head(model, examples, steps=150, lr=3e-3, batch=64, report=lambda s: None)
    assert figures["val_mse_after"] < 0.5 * figures["val_mse_before"]
    changed = {
        n for p in model.get_parameters() if not np.array_equal(before[(n := p.name)], p.asnumpy())
    }
    assert changed and all(n.startswith("mask_decoder.iou_prediction_head.") for n in changed)
    # the names survive training: the checkpoint loads into a fresh model
    path = save_checkpoint(model, tmp_path / "calibrated.ckpt")
    loaded = build_sam_from_checkpoint(path)
    for p in loaded.get_parameters():
        np.testing.assert_array_equal(
            p.asnumpy(), dict(model.parameters_and_names())[p.name].asnumpy()
        )
