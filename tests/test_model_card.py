"""The model card's ten examples, run on a tiny model and a small synthetic image.

The card works on a 1800x1200 photo; its coordinates are scaled to our 128x96 image. The tiny
model is Meta's reference architecture at toy size with random weights (see conftest), loaded
from a real ``.pth``, so the examples can also be checked against Meta's own code.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from napari_sam_ms.pipeline import AMG_DEFAULTS, SamPipeline, pipeline

H, W = 96, 128
SX, SY = W / 1800, H / 1200
RECORD_KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}


def card(values) -> np.ndarray:
    """Scale (x, y, ...) coordinates of the card's 1800x1200 image to ours."""
    a = np.array(values, dtype=float)
    a[..., 0::2] *= SX
    a[..., 1::2] *= SY
    return a


def synthetic_image(seed: int = 0) -> np.ndarray:
    """Shapes on a textured background, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(float)
    img[20:60, 15:55] = (220, 40, 40)
    img[(yy - 55) ** 2 + (xx - 95) ** 2 < 15**2] = (40, 200, 60)
    img[70:90, 30:110] = (30, 30, 200)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_image()


@pytest.fixture(scope="module")
def sam(tiny_pth):
    from napari_sam_ms.build_sam import sam_model_registry

    return sam_model_registry["tiny"](checkpoint=tiny_pth)


@pytest.fixture(scope="module")
def pipe(sam, image) -> SamPipeline:
    p = pipeline("segment_anything", model=sam)
    p.set_image(image)
    return p


def close(a: dict, b: dict, atol: float = 1e-4) -> bool:
    """Same prediction (logits within atol, masks equal but for pixels at the threshold)."""
    return (
        np.allclose(a["low_res_masks"], b["low_res_masks"], atol=atol)
        and np.allclose(a["iou_predictions"], b["iou_predictions"], atol=atol)
        and np.mean(a["masks"] != b["masks"]) < 1e-3
    )


def differ(a: dict, b: dict) -> bool:
    return not np.allclose(a["low_res_masks"], b["low_res_masks"], atol=1e-3)


def check_single(out: dict, c: int, low: tuple[int, int]) -> None:
    assert set(out) == {"masks", "iou_predictions", "low_res_masks"}
    assert out["masks"].shape == (c, H, W) and out["masks"].dtype == np.bool_
    assert out["iou_predictions"].shape == (c,) and out["iou_predictions"].dtype == np.float32
    assert out["low_res_masks"].shape == (c, *low)
    assert out["low_res_masks"].dtype == np.float32


def check_batch(out: dict, b: int, c: int, low: tuple[int, int]) -> None:
    assert out["masks"].shape == (b, c, H, W) and out["masks"].dtype == np.bool_
    assert out["iou_predictions"].shape == (b, c)
    assert out["low_res_masks"].shape == (b, c, *low)


@pytest.fixture(scope="module")
def low(sam) -> tuple[int, int]:
    return tuple(sam.prompt_encoder.mask_input_size)


# ----------------------------------------------------------------- prompts (1-8)
def test_example_1_one_point_three_masks(pipe, low):
    point, label = card([[500, 375]]), np.array([1])
    out = pipe({"points": point, "labels": label}, multimask_output=True)
    check_single(out, 3, low)
    # The card iterates (mask, score) pairs: three distinct candidates.
    assert len(list(zip(out["masks"], out["iou_predictions"], strict=True))) == 3
    assert not np.array_equal(out["masks"][0], out["masks"][1])
    single = pipe({"points": point, "labels": label}, multimask_output=False)
    check_single(single, 1, low)


def test_example_2_two_points_same_object(pipe, low):
    points, labels = card([[500, 375], [1125, 625]]), np.array([1, 1])
    out = pipe({"points": points, "labels": labels}, multimask_output=False)
    check_single(out, 1, low)
    # Both points are used: the result differs from each point alone.
    for i in range(2):
        alone = pipe({"points": points[i : i + 1], "labels": labels[i : i + 1]}, False)
        assert differ(out, alone)


def test_example_3_points_of_different_objects(pipe, low):
    points = card([[[500, 375]], [[1125, 625]]])
    labels = np.array([[1], [1]])
    out = pipe({"points": points, "labels": labels}, multimask_output=False)
    check_batch(out, 2, 1, low)
    # One mask per object, each what that point alone gives.
    for i in range(2):
        alone = pipe({"points": points[i], "labels": labels[i]}, multimask_output=False)
        assert close({k: v[i] for k, v in out.items()}, alone)
    assert differ(
        {"low_res_masks": out["low_res_masks"][0]}, {"low_res_masks": out["low_res_masks"][1]}
    )


def test_example_4_foreground_and_background(pipe, low):
    points = card([[500, 375], [1125, 625]])
    out = pipe({"points": points, "labels": np.array([1, 0])}, multimask_output=False)
    check_single(out, 1, low)
    both_fg = pipe({"points": points, "labels": np.array([1, 1])}, multimask_output=False)
    assert differ(out, both_fg)  # the background label is honoured


def test_example_5_one_box(pipe, low):
    box = card([425, 600, 700, 875])
    out = pipe({"boxes": box}, multimask_output=False)
    check_single(out, 1, low)
    assert out["masks"][0].shape == (H, W)  # the card shows masks[0]
    # Corner order does not matter (a box drawn right-to-left or bottom-to-top).
    flipped = pipe({"boxes": box[[2, 3, 0, 1]]}, multimask_output=False)
    assert close(out, flipped)


def test_example_6_box_and_background_point(pipe, low):
    box = card([425, 600, 700, 875])
    point, label = card([[575, 750]]), np.array([0])
    out = pipe({"points": point, "labels": label, "boxes": box}, multimask_output=False)
    check_single(out, 1, low)
    # Both prompts count: the box did not overwrite the point, nor the point the box.
    assert differ(out, pipe({"boxes": box}, multimask_output=False))
    assert differ(out, pipe({"points": point, "labels": label}, multimask_output=False))
    expected = pipe.predictor.predict(point, label, box, multimask_output=False)
    assert np.allclose(out["low_res_masks"], expected[2], atol=1e-5)


def test_example_7_boxes_each_with_points(pipe, low):
    boxes = card([[425, 600, 700, 875], [1360, 525, 1680, 780]])
    points = card([[[575, 750]], [[1525, 670]]])
    labels = np.array([[1], [1]])
    out = pipe({"points": points, "labels": labels, "boxes": boxes}, multimask_output=False)
    check_batch(out, 2, 1, low)
    for i in range(2):
        alone = pipe(
            {"points": points[i], "labels": labels[i], "boxes": boxes[i]}, multimask_output=False
        )
        assert close({k: v[i] for k, v in out.items()}, alone)
    # The pairing matters: swapping the points between the boxes changes the result.
    swapped = pipe(
        {"points": points[::-1], "labels": labels, "boxes": boxes}, multimask_output=False
    )
    assert differ(out, swapped)


def test_example_8_several_boxes(pipe, low):
    boxes = card(
        [[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800], [1240, 675, 1400, 750]]
    )
    out = pipe({"boxes": boxes}, multimask_output=False)
    check_batch(out, 4, 1, low)
    for i in (0, 3):
        assert close({k: v[i] for k, v in out.items()}, pipe({"boxes": boxes[i]}, False))
    multi = pipe({"boxes": boxes}, multimask_output=True)
    check_batch(multi, 4, 3, low)


def test_examples_6_and_7_match_meta(tiny_reference, pipe, image):
    """Box + points give what Meta's Sam.forward gives for the same prompts."""
    import torch

    from napari_sam_ms.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(tiny_reference.image_encoder.img_size)
    resized = transform.apply_image(image)
    boxes = card([[425, 600, 700, 875], [1360, 525, 1680, 780]])
    points = card([[[575, 750]], [[1525, 670]]])
    labels = np.array([[0], [1]])
    batched = {
        "image": torch.as_tensor(resized.copy()).permute(2, 0, 1).contiguous(),
        "original_size": (H, W),
        "point_coords": torch.as_tensor(transform.apply_coords(points, (H, W)), dtype=torch.float),
        "point_labels": torch.as_tensor(labels),
        "boxes": torch.as_tensor(transform.apply_boxes(boxes, (H, W)), dtype=torch.float),
    }
    with torch.no_grad():
        ref = tiny_reference([batched], multimask_output=False)[0]
    ref_low = ref["low_res_logits"].numpy()
    ours = pipe({"points": points, "labels": labels, "boxes": boxes}, multimask_output=False)
    assert np.allclose(ours["low_res_masks"], ref_low, atol=2e-3 * np.abs(ref_low).max())
    assert np.mean(ours["masks"] != ref["masks"].numpy()) < 1e-3
    # Example 6 is object 0 on its own (box + background point).
    ex6 = pipe({"points": points[0], "labels": labels[0], "boxes": boxes[0]}, False)
    assert np.allclose(ex6["low_res_masks"], ref_low[0], atol=2e-3 * np.abs(ref_low).max())


def test_set_image_by_path_equals_array(sam, pipe, image, tmp_path):
    import tifffile

    point, label = card([[500, 375]]), np.array([1])
    expected = pipe({"points": point, "labels": label})
    Image.fromarray(image).save(tmp_path / "truck.png")
    tifffile.imwrite(tmp_path / "truck.tif", image)
    other = pipeline("segment_anything", model=sam)
    for path in (str(tmp_path / "truck.png"), tmp_path / "truck.tif"):  # str and pathlib
        other.set_image(path)
        assert close(other({"points": point, "labels": label}), expected, atol=1e-6)


def test_bgr_image_format(sam, pipe, image):
    """cv2.imread gives BGR; image_format='BGR' gives the same as the RGB image."""
    other = pipeline("segment_anything", model=sam)
    other.set_image(image[..., ::-1], image_format="BGR")
    prompt = {"boxes": card([425, 600, 700, 875])}
    assert close(other(prompt), pipe(prompt), atol=1e-6)


# ---------------------------------------------------------------- whole image (9, 10)
# A 6x6 grid keeps these fast. The tiny model's random-weight masks are large and speckled,
# so box NMS (IoU 0.7) would leave about one of them: NO_NMS keeps them all for counting.
SMALL = {"points_per_side": 6, "points_per_batch": 36}
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
NO_NMS = {"box_nms_thresh": 1.0}


def test_amg_defaults_are_metas():
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    for name, value in AMG_DEFAULTS.items():
        assert params[name].default == value, name
    assert AMG_DEFAULTS["crop_overlap_ratio"] == 512 / 1500


@pytest.fixture
def generators(monkeypatch) -> list:
    """Record the generator each whole-image call builds, without running it."""
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    made = []

    def fake_generate(self, image, progress=None):
        made.append(self)
        return []

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", fake_generate)
    return made


def test_example_9_defaults_zero_and_no_leak(pipe, image, generators):
    """No parameters means Meta's defaults; 0 means 0; nothing carries over to the next call."""
    pipe({"image": image}, seg_image=True)
    pipe(
        {"image": image},
        seg_image=True,
        pred_iou_thresh=0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        min_mask_region_area=0,
        box_nms_thresh=0,
    )
    pipe({"image": image}, seg_image=True)
    first, zero, last = generators
    for gen in (first, last):
        assert gen.points_per_side == 32 and gen.points_per_batch == 64
        assert gen.pred_iou_thresh == 0.88 and gen.stability_score_thresh == 0.95
        assert gen.stability_score_offset == 1.0 and gen.box_nms_thresh == 0.7
        assert gen.crop_n_layers == 0 and gen.crop_nms_thresh == 0.7
        assert gen.crop_overlap_ratio == 512 / 1500 and gen.crop_n_points_downscale_factor == 1
        assert gen.min_mask_region_area == 0 and gen.output_mode == "binary_mask"
        assert len(gen.point_grids) == 1 and len(gen.point_grids[0]) == 32 * 32
    assert zero.pred_iou_thresh == 0 and zero.stability_score_thresh == 0
    assert zero.box_nms_thresh == 0 and zero.crop_n_layers == 1
    assert len({id(first), id(zero), id(last)}) == 3  # a new generator per call


def test_example_9_whole_image_records(pipe, image, tmp_path):
    records = pipe({"image": image}, seg_image=True, **SMALL, **KEEP_ALL)
    assert isinstance(records, list) and records
    for rec in records:
        assert RECORD_KEYS <= set(rec)
        assert rec["segmentation"].shape == (H, W) and rec["segmentation"].dtype == np.bool_
        assert rec["area"] == rec["segmentation"].sum()
        assert len(rec["bbox"]) == 4 and len(rec["point_coords"]) == 1
        assert rec["crop_box"] == [0, 0, W, H]
    # By path, the same records.
    path = tmp_path / "dog.png"
    Image.fromarray(image).save(path)
    by_path = pipe({"image": str(path)}, seg_image=True, **SMALL, **KEEP_ALL)
    assert [r["area"] for r in by_path] == [r["area"] for r in records]


def test_thresholds_and_min_area_are_honoured(pipe, image):
    run = lambda **kw: pipe({"image": image}, seg_image=True, **SMALL, **NO_NMS, **kw)  # noqa: E731
    default = run()
    keep_all = run(**KEEP_ALL)
    assert len(keep_all) > len(default)
    assert len(keep_all) == 3 * 36  # every candidate mask (3 per grid point) kept at 0
    ious = np.array([r["predicted_iou"] for r in keep_all])
    cut = float(np.median(ious))
    part = run(pred_iou_thresh=cut, stability_score_thresh=0.0)
    assert 0 < len(part) == int((ious > cut).sum())
    # min_mask_region_area cleans the (speckled) masks of this model.
    cleaned = run(**KEEP_ALL, min_mask_region_area=50)
    assert sorted(r["area"] for r in cleaned) != sorted(r["area"] for r in keep_all)


def test_example_10_parameters_are_honoured(pipe, image):
    totals = []
    tuned = pipe(
        {"image": image},
        seg_image=True,
        points_per_side=4,
        points_per_batch=16,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
        progress=lambda done, total: totals.append(total),
    )
    # One batch for the whole image (4x4 points) and one per crop of layer 1 (2x2 points).
    assert totals and totals[-1] == 1 + 4
    assert tuned
    from skimage.measure import label as connected

    # No island or hole (8-connected, as Meta) under 100 pixels, unless it is the only one.
    for rec in tuned:
        seg = rec["segmentation"]
        islands = np.bincount(connected(seg, connectivity=2).ravel())[1:]
        assert len(islands) <= 1 or islands.min() >= 100
        holes = np.bincount(connected(~seg, connectivity=2).ravel())[1:]
        assert len(holes) <= 1 or holes.min() >= 100


def test_whole_image_keeps_interactive_embedding(sam, image):
    p = pipeline("segment_anything", model=sam)
    p.set_image(image)
    prompt = {"points": card([[500, 375]]), "labels": np.array([1])}
    before = p(prompt)
    other = synthetic_image(seed=5)[::-1].copy()
    p({"image": other}, seg_image=True, **SMALL)
    after = p(prompt)
    for key in before:
        assert np.array_equal(before[key], after[key]), key


def test_unknown_whole_image_parameter(pipe, image):
    with pytest.raises(TypeError, match="points_per_sid.*valid ones are.*points_per_side"):
        pipe({"image": image}, seg_image=True, points_per_sid=8)
    with pytest.raises(TypeError, match="need seg_image=True"):
        pipe({"points": card([[500, 375]]), "labels": [1]}, pred_iou_thresh=0.5)
    with pytest.raises(ValueError, match="takes {'image': array_or_path} only"):
        pipe({"image": image, "points": [[1, 2]]}, seg_image=True)


def test_embedded_model_brings_its_own_whole_image_filters(image, generators):
    """The embedded micro model keeps almost nothing with Meta's thresholds: named (or the
    default without official weights), its pipeline uses the filters chosen for it; a
    parameter given in the call still wins; a Sam passed in keeps Meta's defaults."""
    from napari_sam_ms.weights import whole_image_settings

    own = whole_image_settings("micro")
    assert own
    task = pipeline("segment_anything", model="sam_ms_micro")
    assert task.whole_image_defaults == {**AMG_DEFAULTS, **own, "mirror_average": True}
    task({"image": image}, seg_image=True)
    task({"image": image}, seg_image=True, pred_iou_thresh=0.99)
    pipeline("segment_anything", model=task.model)({"image": image}, seg_image=True)
    mine, given, meta = generators
    for name, value in own.items():
        assert getattr(mine, name) == pytest.approx(value), name
    assert given.pred_iou_thresh == 0.99
    assert given.box_nms_thresh == pytest.approx(own["box_nms_thresh"])
    assert meta.pred_iou_thresh == 0.88 and meta.box_nms_thresh == 0.7
    assert mine.mirror_average and given.mirror_average and not meta.mirror_average
