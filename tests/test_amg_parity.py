"""Whole-image segmentation: our generator and amg helpers against Meta's.

Three layers:

- generator parity: our ``SamAutomaticMaskGenerator`` on the tiny model loaded from Meta's
  ``.pth`` must give Meta's records (``tests/fixtures/reference_amg.json``, written by
  ``tests/reference/make_fixtures.py``) for every stored setting;
- helper parity: our numpy helpers against Meta's torch ones (``segment_anything.utils.amg``
  needs torch only) on random inputs, and ``nms`` against hand-checked torchvision results;
- behaviour: the generator has its own predictor, settings do not leak, progress and cancel,
  parameter errors.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam_ms.utils import amg

FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "reference_amg.json").read_text())
IMAGE = np.load(FIXTURES / "reference_outputs.npz")["image"]
SCORE_ATOL = 1e-4

try:
    import pycocotools  # noqa: F401

    HAVE_COCO = True
except ImportError:
    HAVE_COCO = False


@pytest.fixture(scope="module")
def model():
    from napari_sam_ms.build_sam import sam_model_registry

    return sam_model_registry["tiny"](checkpoint=FIXTURES / "tiny_sam.pth")


def _params(name: str) -> dict:
    params = dict(REF["settings"][name]["params"])
    if params.get("point_grids") is not None:
        params["point_grids"] = [np.asarray(g) for g in params["point_grids"]]
    if params.get("output_mode") == "coco_rle" and not HAVE_COCO:
        params["output_mode"] = "uncompressed_rle"  # compare the uncompressed copy instead
    return params


_RESULTS: dict[str, list[dict]] = {}


@pytest.fixture(scope="module")
def our_records(model):
    """Our generator's records per setting, computed once."""
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    def get(name: str) -> list[dict]:
        if name not in _RESULTS:
            _RESULTS[name] = SamAutomaticMaskGenerator(model, **_params(name)).generate(IMAGE)
        return _RESULTS[name]

    return get


def _uncompressed(record: dict, ref: bool) -> dict:
    seg = record["segmentation"]
    if isinstance(seg, np.ndarray):
        return amg.mask_to_rle(seg[None])[0]
    if isinstance(seg["counts"], str):
        if ref:
            return record["segmentation_uncompressed"]
        from pycocotools import mask as coco_mask

        mask = coco_mask.decode({**seg, "counts": seg["counts"].encode()}).astype(bool)
        return amg.mask_to_rle(mask[None])[0]
    return seg


def _tie_groups(scores: list[float]) -> list[range]:
    """Runs of equal scores of Meta's last NMS (torch sorts them in no defined order)."""
    groups, start = [], 0
    for i in range(1, len(scores) + 1):
        if i == len(scores) or scores[i] != scores[start]:
            groups.append(range(start, i))
            start = i
    return groups


def _key(record: dict, rle: dict) -> tuple:
    return (tuple(rle["counts"]), tuple(record["point_coords"][0]), tuple(record["crop_box"]))


@pytest.mark.parametrize("name", sorted(REF["settings"]))
def test_generator_matches_meta(our_records, name):
    setting = REF["settings"][name]
    ref_records = setting["records"]
    ours = our_records(name)
    assert len(ours) == len(ref_records)
    mode = _params(name).get("output_mode", "binary_mask")
    for group in _tie_groups(setting["final_nms_scores"]):
        # Within a run of tied NMS scores Meta's order is torch's unstable sort: compare as sets.
        pairs = [(ours[i], _uncompressed(ours[i], ref=False)) for i in group]
        refs = [(ref_records[i], _uncompressed(ref_records[i], ref=True)) for i in group]
        if len(group) > 1:
            pairs.sort(key=lambda p: _key(*p))
            refs.sort(key=lambda p: _key(*p))
        for (rec, rle), (want, want_rle) in zip(pairs, refs, strict=True):
            assert rle == want_rle, "masks differ"
            seg = rec["segmentation"]
            if mode == "binary_mask":
                assert seg.dtype == np.bool_ and seg.shape == IMAGE.shape[:2]
                assert seg.flags.c_contiguous and int(seg.sum()) == rec["area"]
            elif mode == REF["settings"][name]["params"].get("output_mode"):
                assert seg == want["segmentation"]  # the same RLE dict (or COCO string)
            assert rec["area"] == want["area"]
            assert rec["bbox"] == want["bbox"]
            assert rec["crop_box"] == want["crop_box"]
            assert rec["point_coords"] == want["point_coords"]  # floats, not truncated
            assert math.isclose(rec["predicted_iou"], want["predicted_iou"], abs_tol=SCORE_ATOL)
            a, b = rec["stability_score"], want["stability_score"]
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=SCORE_ATOL)


def test_zero_thresholds_disable_filters(our_records):
    """A threshold of 0 keeps masks a default threshold would drop (the old port's bug)."""
    records = our_records("grid_no_filters")
    assert any(r["predicted_iou"] < 0.88 for r in records)
    assert any(r["stability_score"] < 0.95 for r in records)


def test_coco_rle_without_pycocotools_says_how_to_install(model, monkeypatch):
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install pycocotools"):
        SamAutomaticMaskGenerator(model, output_mode="coco_rle")


# ----------------------------------------------------------------- generator behaviour


def _small(model, **kwargs):
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    params.update(kwargs)
    return SamAutomaticMaskGenerator(model, **params)


def test_generate_keeps_interactive_embedding(model):
    from napari_sam_ms.predictor import SamPredictor

    interactive = SamPredictor(model)
    other = np.ascontiguousarray(IMAGE[::-1, ::-1])
    interactive.set_image(other)
    features = interactive.get_image_embedding().asnumpy().copy()
    before = interactive.predict(np.array([[50.0, 40.0]]), np.array([1]))
    gen = _small(model, points_per_side=1)
    assert gen.predictor is not interactive
    gen.generate(IMAGE)
    assert interactive.is_image_set
    np.testing.assert_array_equal(interactive.get_image_embedding().asnumpy(), features)
    assert interactive.original_size == other.shape[:2]
    after = interactive.predict(np.array([[50.0, 40.0]]), np.array([1]))
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)


def test_settings_do_not_leak_between_generators(model):
    permissive = _small(model, points_per_side=2)
    strict = _small(model, points_per_side=2, pred_iou_thresh=0.88, stability_score_thresh=0.95)

    def snapshot(gen) -> dict:
        state = {k: v for k, v in vars(gen).items() if k != "point_grids"}
        state["point_grids"] = [g.tolist() for g in gen.point_grids]
        return state

    settings = snapshot(permissive), snapshot(strict)
    first = permissive.generate(IMAGE)
    assert len(first) > 0
    assert strict.generate(IMAGE) == []  # Meta's defaults keep nothing on this model
    again = permissive.generate(IMAGE)
    assert [r["bbox"] for r in again] == [r["bbox"] for r in first]
    assert [r["predicted_iou"] for r in again] == [r["predicted_iou"] for r in first]
    assert (snapshot(permissive), snapshot(strict)) == settings


def test_grayscale_and_uint16_images_are_converted(model):
    from napari_sam_ms.utils.image import to_rgb_uint8

    gen = _small(model, points_per_side=1)
    gray16 = (IMAGE.mean(-1) * 200).astype(np.uint16)
    got = gen.generate(gray16)
    want = gen.generate(to_rgb_uint8(gray16))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"]


def test_progress_and_cancel(model):
    from napari_sam_ms.automatic_mask_generator import GenerationCancelled

    gen = _small(model, points_per_side=2, points_per_batch=3)  # 4 points -> 2 batches
    calls: list[tuple[int, int]] = []
    gen.generate(IMAGE, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]

    seen: list[int] = []

    def stop_after_one(done: int, total: int) -> bool:
        seen.append(done)
        return done < 1

    with pytest.raises(GenerationCancelled):
        gen.generate(IMAGE, progress=stop_after_one)
    assert seen == [0, 1]
    assert not gen.predictor.is_image_set  # the crop embedding is released
    with pytest.raises(GenerationCancelled):
        gen.generate(IMAGE, progress=lambda done, total: False)  # before any work


def test_progress_total_counts_batches_of_all_layers(model):
    from napari_sam_ms.automatic_mask_generator import GenerationCancelled

    gen = _small(model, crop_n_layers=1, crop_n_points_downscale_factor=2, points_per_batch=3)
    # Layer 0: 16 points -> 6 batches; layer 1: 4 crops x 4 points -> 2 batches each.
    calls = []
    with pytest.raises(GenerationCancelled):  # cancelled at once: the total is known up front
        gen.generate(IMAGE, progress=lambda done, total: calls.append((done, total)) or False)
    assert calls == [(0, 6 + 4 * 2)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(points_per_side=None), ValueError, "exactly one"),
        (dict(point_grids=[amg.build_point_grid(2)]), ValueError, "exactly one"),
        (dict(output_mode="png"), ValueError, "output_mode"),
        (dict(points_per_batch=0), ValueError, "points_per_batch"),
        (dict(points_per_side=2.5), TypeError, "points_per_side"),
        (dict(box_nms_thresh=1.5), ValueError, "box_nms_thresh"),
        (dict(pred_iou_thresh=float("nan")), ValueError, "pred_iou_thresh"),
        (dict(crop_n_layers=-1), ValueError, "crop_n_layers"),
        (
            dict(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4),
            ValueError,
            "no points",
        ),
        (dict(points_per_side=None, point_grids=[np.ones((3, 3))]), ValueError, r"\(N, 2\)"),
        (dict(points_per_side=None, point_grids=[np.full((3, 2), 2.0)]), ValueError, "0, 1"),
        (
            dict(points_per_side=None, point_grids=[amg.build_point_grid(2)], crop_n_layers=1),
            ValueError,
            "one per layer",
        ),
    ],
)
def test_parameter_errors(model, kwargs, error, match):
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    with pytest.raises(error, match=match):
        SamAutomaticMaskGenerator(model, **kwargs)


def test_point_grids_are_copied(model):
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

    grid = amg.build_point_grid(2)
    gen = SamAutomaticMaskGenerator(model, points_per_side=None, point_grids=[grid])
    grid[:] = 0.0
    np.testing.assert_array_equal(gen.point_grids[0], amg.build_point_grid(2))


# ------------------------------------------------------------- helpers: hand-checked cases


def test_nms_hand_cases():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]
    # IoU(0, 1) = 81 / 119 = 0.68
    np.testing.assert_array_equal(amg.nms(boxes, [0.9, 0.8, 0.7], 0.5), [0, 2])
    np.testing.assert_array_equal(amg.nms(boxes, [0.9, 0.8, 0.7], 0.7), [0, 1, 2])
    np.testing.assert_array_equal(amg.nms(boxes, [0.1, 0.8, 0.7], 0.5), [1, 2])
    # Exactly at the threshold: kept (suppression needs IoU > threshold).
    np.testing.assert_array_equal(amg.nms([[0, 0, 3, 1], [1, 0, 4, 1]], [2, 1], 0.5), [0, 1])
    # IoU 3/10 in float32 is 0.30000001 > 0.3: torchvision suppresses (double comparison).
    np.testing.assert_array_equal(amg.nms([[0, 0, 10, 1], [0, 0, 3, 1]], [2, 1], 0.3), [0])
    # Equal scores keep their input order (stable sort).
    np.testing.assert_array_equal(amg.nms([[0, 0, 1, 1]] * 3, [1, 1, 1], 1.0), [0, 1, 2])
    np.testing.assert_array_equal(amg.nms([[0, 0, 1, 1]] * 3, [1, 1, 1], 0.5), [0])
    # Empty boxes have IoU 0/0 = NaN with each other: never suppressed (as torchvision).
    np.testing.assert_array_equal(amg.nms(np.zeros((3, 4)), [0.9, 0.8, 0.7], 0.5), [0, 1, 2])
    assert amg.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    np.testing.assert_array_equal(amg.box_area(np.array([[0, 0, 4, 3], [2, 2, 2, 5]])), [12, 0])


def test_stability_score_hand_case():
    logits = np.array([[[2.0, 0.5, -0.5, -2.0]], [[-3.0, -3.0, -3.0, -3.0]]], np.float32)
    score = amg.calculate_stability_score(logits, 0.0, 1.0)
    assert score.dtype == np.float32
    assert score[0] == np.float32(1 / 3)
    assert np.isnan(score[1])


def test_crop_boxes_and_grids_hand_case():
    boxes, layers = amg.generate_crop_boxes((96, 120), 1, 512 / 1500)
    # overlap = int(0.3413 * 96) = 32; crop w = ceil((32 + 120) / 2) = 76, h = 64.
    assert boxes == [
        [0, 0, 120, 96],
        [0, 0, 76, 64],
        [0, 32, 76, 96],
        [44, 0, 120, 64],
        [44, 32, 120, 96],
    ]
    assert layers == [0, 1, 1, 1, 1]
    np.testing.assert_allclose(
        amg.build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    )
    grids = amg.build_all_layer_point_grids(8, 2, 2)
    assert [len(g) for g in grids] == [64, 16, 4]


def test_mask_box_rle_hand_case():
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True
    mask[2, 2] = True
    np.testing.assert_array_equal(amg.batched_mask_to_box(mask), [1, 1, 2, 2])
    np.testing.assert_array_equal(
        amg.batched_mask_to_box(np.stack([mask, np.zeros_like(mask)])), [[1, 1, 2, 2], [0] * 4]
    )
    # Column-major runs: col 0 (3 off), col 1 (off, on, off), col 2 (off, on, on), col 3.
    rle = amg.mask_to_rle(mask[None])[0]
    assert rle == {"size": [3, 4], "counts": [4, 1, 2, 2, 3]}
    assert amg.area_from_rle(rle) == 3
    full = amg.mask_to_rle(np.ones((1, 2, 2), bool))[0]
    assert full["counts"] == [0, 4]
    np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
    with pytest.raises(ValueError, match="counts"):
        amg.rle_to_mask({"size": [3, 4], "counts": [4, 1]})


def test_rle_round_trip_random():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 17, 23)) < 0.3
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0] = True
    masks[3, -1, -1] = True
    rles = amg.mask_to_rle(masks)
    for m, r in zip(masks, rles, strict=True):
        np.testing.assert_array_equal(amg.rle_to_mask(r), m)
        assert amg.area_from_rle(r) == int(m.sum())
        assert sum(r["counts"]) == m.size


def test_remove_small_regions_hand_case():
    mask = np.zeros((12, 12), bool)
    mask[2:9, 2:9] = True
    mask[5, 5] = False  # a one-pixel hole
    mask[11, 11] = True  # a one-pixel island
    filled, changed = amg.remove_small_regions(mask, 4, "holes")
    assert changed and filled[5, 5] and filled[11, 11]
    cleaned, changed = amg.remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[11, 11] and cleaned[2:9, 2:9].all()
    same, changed = amg.remove_small_regions(cleaned, 4, "islands")
    assert not changed and same is cleaned
    # When every island is small, the largest is kept.
    tiny = np.zeros((6, 6), bool)
    tiny[0, 0] = tiny[3, 3] = tiny[3, 4] = True
    kept, _ = amg.remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 2 and kept[3, 3]


def test_mask_data_filter_and_cat():
    data = amg.MaskData(a=np.arange(4), b=["w", "x", "y", "z"])
    data.filter(np.array([True, False, True, True]))
    assert data["a"].tolist() == [0, 2, 3] and data["b"] == ["w", "y", "z"]
    data.filter(np.array([2, 0]))
    assert data["a"].tolist() == [3, 0] and data["b"] == ["z", "w"]
    data.cat(amg.MaskData(a=np.array([9]), b=["q"], c=np.array([1.0])))
    assert data["a"].tolist() == [3, 0, 9] and data["b"] == ["z", "w", "q"]
    with pytest.raises(TypeError):
        amg.MaskData(a=(1, 2))


def test_batch_iterator():
    batches = list(amg.batch_iterator(3, np.arange(7), list("abcdefg")))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches[-1][1] == ["g"]
    with pytest.raises(ValueError):
        list(amg.batch_iterator(2, [1, 2], [1]))


# --------------------------------------------------- helpers: against Meta's torch helpers


@pytest.fixture(scope="module")
def meta_amg():
    """Meta's ``segment_anything.utils.amg`` (torch only; no torchvision needed)."""
    pytest.importorskip("torch")
    from reference import load_reference_modeling

    load_reference_modeling()  # makes ``segment_anything`` importable without torchvision
    return importlib.import_module("segment_anything.utils.amg")


def test_helpers_match_meta_on_random_masks(meta_amg):
    import torch

    rng = np.random.default_rng(1)
    logits = (rng.normal(0, 2, (20, 31, 37)) * (rng.random((20, 1, 1)) < 0.8)).astype(np.float32)
    logits[3] = -5.0  # empty masks
    masks = logits > 0
    tmasks = torch.as_tensor(masks)
    for offset in (1.0, 0.5):
        np.testing.assert_array_equal(
            amg.calculate_stability_score(logits, 0.0, offset),
            meta_amg.calculate_stability_score(torch.as_tensor(logits), 0.0, offset).numpy(),
        )
    np.testing.assert_array_equal(
        amg.batched_mask_to_box(masks), meta_amg.batched_mask_to_box(tmasks).numpy()
    )
    assert amg.mask_to_rle(masks) == meta_amg.mask_to_rle_pytorch(tmasks)
    for rle in amg.mask_to_rle(masks):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), meta_amg.rle_to_mask(rle))
    crop = [5, 7, 36, 38]
    np.testing.assert_array_equal(
        amg.uncrop_masks(masks, crop, 50, 60), meta_amg.uncrop_masks(tmasks, crop, 50, 60).numpy()
    )
    boxes = amg.batched_mask_to_box(masks)
    np.testing.assert_array_equal(
        amg.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 50]),
        meta_amg.is_box_near_crop_edge(torch.as_tensor(boxes), crop, [0, 0, 60, 50]).numpy(),
    )
    for area in (3, 30):
        for mode in ("holes", "islands"):
            for m in masks[:8]:
                ours, changed = amg.remove_small_regions(m, area, mode)
                ref, ref_changed = meta_amg.remove_small_regions(m, area, mode)
                assert changed == ref_changed
                np.testing.assert_array_equal(ours, ref)


def test_grids_and_crops_match_meta(meta_amg):
    for n, layers, scale in [(32, 0, 1), (8, 2, 2), (5, 1, 3)]:
        for ours, ref in zip(
            amg.build_all_layer_point_grids(n, layers, scale),
            meta_amg.build_all_layer_point_grids(n, layers, scale),
            strict=True,
        ):
            np.testing.assert_array_equal(ours, ref)
    for size in [(96, 120), (600, 800), (1024, 1024), (333, 77)]:
        for layers in (0, 1, 2, 3):
            for ratio in (512 / 1500, 0.0, 0.5):
                assert amg.generate_crop_boxes(size, layers, ratio) == (
                    meta_amg.generate_crop_boxes(size, layers, ratio)
                )


def test_module_imports_no_torch_or_qt():
    """The generator and its helpers need numpy, opencv and MindSpore only."""
    import subprocess

    code = (
        "import sys; import napari_sam_ms.automatic_mask_generator, napari_sam_ms.utils.amg; "
        "bad = [m for m in ('torch', 'torchvision', 'qtpy', 'napari') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
