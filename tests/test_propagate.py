"""Propagating one object through a stack (napari_sam_ms.propagate) with the embedded model.

Synthetic volumes with ground truth: two 12 x 160 x 160 fields of nucleus-like ellipsoids
(xy radii 6..14 px, z radii 2.5..5 slices: anisotropic, few slices per radius), one with a
touching pair. Embeddings are cached once for the module (one shared memory cache).
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_volumes import FIELDS, SHAPE, field, iou3d

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.loader import load_model, make_predictor
from napari_sam_ms.progress import Cancelled
from napari_sam_ms.propagate import (
    DEFAULT_PROMPT,
    Propagation,
    PropagationCancelled,
    propagate,
    propagate_object,
)
from napari_sam_ms.volumes.slice_prompts import (
    enlarged_box,
    inner_point,
    mask_iou,
    point_prompt,
    prompt_from_mask,
)

# Measured with the embedded micro model (one click on the middle slice, default prompt
# points+mask): mean 3D IoU 0.880 over these eight ellipsoids, the lowest 0.806. Asserted
# with a margin for other CPUs and kernels.
MEAN_IOU_FLOOR = 0.84
GAP_IOU_FLOOR = 0.7  # measured: see test_gaps_between_annotated_slices_are_filled...
EACH_IOU_FLOOR = 0.72


@pytest.fixture(scope="module")
def micro():
    """The embedded default model, one predictor and one memory cache for the module."""
    loaded = load_model()
    predictor = make_predictor(loaded)
    cache = EmbeddingCache(cache_dir=False, max_items=64)
    return {"model": loaded, "predictor": predictor, "cache": cache}


@pytest.fixture(scope="module")
def fields():
    return [field(objects, seed) for seed, objects in enumerate(FIELDS)]


def click(volume, micro, center, **options) -> Propagation:
    z, y, x = center
    return propagate_object(volume, z=int(z), points=[[x, y]], labels=[1], **micro, **options)


# ---------------------------------------------------------------- quality


def test_one_click_on_the_middle_slice_reaches_the_measured_3d_iou(micro, fields):
    ious = []
    for (volume, labels), objects in zip(fields, FIELDS, strict=True):
        for i, (center, _) in enumerate(objects, 1):
            result = click(volume, micro, center)
            assert result.mask.shape == volume.shape and result.mask.dtype == bool
            assert result.complete and int(center[0]) in result.slices
            ious.append(iou3d(result.mask, labels == i))
    print("3D IoU per ellipsoid:", [round(v, 3) for v in ious], "mean", np.mean(ious))
    assert np.mean(ious) >= MEAN_IOU_FLOOR
    assert min(ious) >= EACH_IOU_FLOOR


def test_the_default_prompt_is_near_the_best_kind_on_static_objects(micro, fields):
    """The default (box) is chosen for moving and larger objects (tests/test_timelapse.py);
    on static ellipsoids it stays within 0.03 mean 3D IoU of points+mask, the best there."""
    volume, labels = fields[0]
    means = {}
    for kind in ("points+mask", DEFAULT_PROMPT):
        scores = [
            iou3d(click(volume, micro, center, prompt=kind).mask, labels == i)
            for i, (center, _) in enumerate(FIELDS[0], 1)
        ]
        means[kind] = float(np.mean(scores))
    print("mean 3D IoU per prompt kind:", {k: round(v, 3) for k, v in means.items()})
    assert DEFAULT_PROMPT == "box"
    assert means[DEFAULT_PROMPT] >= max(means.values()) - 0.03


def test_touching_pair_stays_apart(micro, fields):
    volume, labels = fields[1]
    left = click(volume, micro, FIELDS[1][0][0]).mask
    right = click(volume, micro, FIELDS[1][1][0]).mask
    assert iou3d(left, right) < 0.05
    assert iou3d(left, labels == 1) > 0.7 and iou3d(right, labels == 2) > 0.7


# ---------------------------------------------------------------- stop rules


def test_an_object_ending_mid_stack_is_not_propagated_into_empty_slices(micro, fields):
    volume, labels = fields[0]
    center = FIELDS[0][1][0]  # z 5 +- 3.5: slices 2..8 hold it
    result = click(volume, micro, center)
    present = np.flatnonzero((labels == 2).any(axis=(1, 2)))
    beyond = [z for z in range(SHAPE[0]) if z < present[0] or z > present[-1]]
    assert beyond and not result.mask[beyond].any()
    assert set(result.slices) <= set(present.tolist())
    assert not result.stops["below"] == "end" and not result.stops["above"] == "end"


def test_object_on_the_last_slice_propagates_one_way(micro, fields):
    volume, labels = fields[0]
    cut, truth = volume[:8], labels[:8] == 3  # z 7 +- 5: its middle is the last slice
    result = propagate_object(cut, z=7, mask=truth[7], **micro)
    assert result.stops["above"] == "end"
    assert 7 in result.slices and min(result.slices) <= 4
    assert iou3d(result.mask, truth) > 0.7


# ---------------------------------------------------------------- gaps, axes, cache


def test_gaps_between_annotated_slices_are_filled_from_both_ends(micro, fields):
    volume, labels = fields[0]
    truth = labels == 3
    result = propagate_object(volume, mask={4: truth[4], 10: truth[10]}, **micro)
    assert np.array_equal(result.mask[4], truth[4]) and np.array_equal(result.mask[10], truth[10])
    filled = [mask_iou(result.mask[z], truth[z]) for z in range(5, 10)]
    print("gap 4-10, IoU per filled slice:", np.round(filled, 3))
    assert np.mean(filled) > GAP_IOU_FLOOR and min(filled) > 0.5
    assert result.stops["gap 4-10 up"] and result.stops["gap 4-10 down"]
    # the same from a mask volume whose non-empty slices are the annotations
    annotated = np.zeros_like(truth)
    annotated[[4, 10]] = truth[[4, 10]]
    again = propagate(volume, mask=annotated, **micro)
    assert np.array_equal(again, result.mask)


def test_another_axis_gives_the_same_object(micro, fields):
    volume, _ = fields[0]
    center = FIELDS[0][0][0]
    direct = click(volume, micro, center).mask
    moved = np.moveaxis(volume, 0, 2)  # (Y, X, Z)
    z, y, x = center
    other = propagate(moved, z=z, points=[[x, y]], axis=2, **micro)
    assert other.shape == moved.shape
    assert np.array_equal(np.moveaxis(other, 2, 0), direct)


def test_slice_embeddings_are_cached_as_parts_shared_with_others(micro, fields):
    volume, _ = fields[1]
    cache = EmbeddingCache(cache_dir=False, max_items=64)
    options = {**micro, "cache": cache, "image_id": "stack-under-test"}
    result = click(volume, options, FIELDS[1][2][0])
    model_id = micro["model"].cache_id + micro["predictor"].embedding_suffix
    for z in result.slices:
        assert cache.get_part("stack-under-test", model_id, "slices", (z,), (12,)) is not None
    again = click(volume, options, FIELDS[1][2][0])
    assert np.array_equal(again.mask, result.mask)


# ---------------------------------------------------------------- progress, cancel


def test_progress_reports_every_slice_and_ends_at_the_total(micro, fields):
    volume, _ = fields[1]
    seen: list[tuple[int, int]] = []
    click(volume, micro, FIELDS[1][2][0], progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] == 12


def test_cancel_mid_way_keeps_the_slices_done(micro, fields):
    volume, labels = fields[0]
    center = FIELDS[0][2][0]
    calls = []

    def stop_after_three(done, total):
        calls.append(done)
        return len(calls) < 3

    with pytest.raises(PropagationCancelled) as info:
        click(volume, micro, center, progress=stop_after_three)
    partial = info.value.result
    assert isinstance(info.value, Cancelled) and not partial.complete
    assert 1 <= len(partial.slices) < 9 and int(center[0]) in partial.slices
    full = click(volume, micro, center)
    for z in partial.slices:
        assert np.array_equal(partial.mask[z], full.mask[z])

    with pytest.raises(PropagationCancelled) as info:
        click(volume, micro, center, cancel=lambda: True)
    assert info.value.result.slices == () and not info.value.result.mask.any()


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(micro, fields):
    volume, labels = fields[0]
    truth = labels == 1
    cases = [
        (dict(volume=volume[6], z=0, points=[[40, 40]]), "2D image"),
        (dict(volume=volume[None], z=0, points=[[40, 40]]), "3D stack"),
        (dict(volume=volume, z=12, points=[[40, 40]]), "outside the stack"),
        (dict(volume=volume, z=-1, points=[[40, 40]]), "outside the stack"),
        (dict(volume=volume, z=None, points=[[40, 40]]), "say which slice"),
        (dict(volume=volume, z=6), "no object"),
        (dict(volume=volume, z=6, mask=np.zeros((160, 160), bool)), "empty"),
        (dict(volume=volume, mask=np.zeros(SHAPE, bool)), "empty"),
        (dict(volume=volume, z=6, mask=truth[6][:100]), "shape"),
        (dict(volume=volume, mask=truth[:, :100]), "shape"),
        (dict(volume=volume, mask={99: truth[6]}), "outside the stack"),
        (dict(volume=volume, z=6, points=[[40, 40]], prompt="lasso"), "prompt kind"),
        (dict(volume=volume, z=6, points=[[40, 40]], axis=3), "axis"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            propagate(**kwargs, **micro)


# ---------------------------------------------------------------- prompts from a mask


def test_prompts_from_a_mask():
    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:50] = True  # x 20..49, y 10..29
    box = enlarged_box(mask)
    assert box[0] < 20 and box[1] < 10 and box[2] > 49 and box[3] > 29
    assert box[0] >= 0 and box[3] <= 49
    x, y = inner_point(mask)
    assert mask[y, x] and 25 <= x <= 44 and 17 <= y <= 22  # on the long axis's ridge
    points, labels = point_prompt(mask)
    assert labels[0] == 1 and (labels[1:] == 0).all() and len(points) == 5
    for px, py in points[1:].astype(int):
        assert not mask[py, px]
    logits = np.zeros((1, 64, 64), np.float32)
    kw = prompt_from_mask(mask, "box+points+mask", logits)
    assert kw["box"] is not None and kw["point_coords"] is not None
    assert kw["mask_input"] is not None
    assert not kw["multimask_output"]
    assert prompt_from_mask(mask, "points")["multimask_output"]
    fallback = prompt_from_mask(mask, "points+mask", None)  # a committed mask: no logits
    assert fallback["box"] is not None and fallback["mask_input"] is None
    assert fallback["point_coords"] is None


# ---------------------------------------------------------------- large slices: tiles
def _small_nuclei_stack(n: int = 5, side: int = 768):
    """``n`` slices of ``side`` px: four disks of radius 9 px, the first moving 2 px a slice
    in y (about 3 px across after micro's 3x shrink of a whole slice)."""
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:side, :side]
    volume = (rng.random((n, side, side)) * 20).astype(np.uint8)
    truth = np.zeros((n, side, side), bool)
    for z in range(n):
        for cy, cx in [(300, 300), (330, 330), (500, 200), (100, 600)]:
            volume[z][(yy - cy - 2 * z) ** 2 + (xx - cx) ** 2 <= 81] = 200
        truth[z] = (yy - 300 - 2 * z) ** 2 + (xx - 300) ** 2 <= 81
    return volume, truth


def test_large_slices_are_answered_through_tiles_at_their_resolution(micro):
    """Slices 3x the model's input: through tiles each slice's mask follows the small
    nucleus far more closely than from the shrunk whole slice (measured: 3D IoU 0.92 vs
    0.77); only the tile covering each slice's box is embedded and cached."""
    volume, truth = _small_nuclei_stack()
    model = dict(model=micro["model"], predictor=micro["predictor"])
    box = (290, 290, 310, 310)
    whole = propagate_object(volume, 2, box=box, cache=EmbeddingCache(cache_dir=False), **model)
    cache = EmbeddingCache(cache_dir=False, max_items=64)
    options = dict(model, cache=cache)
    tiled = propagate_object(volume, 2, box=box, tile_shape="auto", **options)
    assert tiled.tiled and not whole.tiled and tiled.slices == tuple(range(5))
    assert iou3d(tiled.mask, truth) > 0.85
    assert iou3d(tiled.mask, truth) > iou3d(whole.mask, truth) + 0.05
    assert len(cache) == 5  # one tile embedded per slice: the one covering the object
    # an explicit tile size, and the mask prompt kinds refused with advice
    again = propagate_object(volume, 2, box=box, tile_shape=192, **options)
    np.testing.assert_array_equal(again.mask, tiled.mask)
    with pytest.raises(ValueError, match="choose box, points or box\\+points"):
        propagate_object(volume, 2, box=box, tile_shape="auto", prompt="box+mask", **options)
    with pytest.raises(ValueError, match="tile_shape"):
        propagate_object(volume, 2, box=box, tile_shape="big", **options)


def test_the_volumes_session_propagates_large_slices_through_tiles(micro):
    """The Volumes widget's session on slices this large: precompute embeds every tile of
    every slice, progress per tile; a committed object then propagates through those tiles
    without embedding any, and a second precompute finds them all."""
    from napari_sam_ms.interaction import ModelHolder
    from napari_sam_ms.volume_session import VolumeSession

    holder = ModelHolder(
        "micro",
        loader=lambda model_type, checkpoint: micro["model"],
        predictor_factory=lambda loaded: micro["predictor"],
        background_warm_up=False,
    )
    session = VolumeSession(holder, EmbeddingCache(cache_dir=False))
    volume, truth = _small_nuclei_stack()
    calls: list[tuple[int, int]] = []
    done = session.precompute(volume, None, lambda *a: calls.append(a))
    n, per = volume.shape[0], done.tiles
    assert done.tiled and per > 1 and done.computed == n * per and done.reused == 0
    assert calls[-1] == (n * per, n * per) and len(calls) == n * per + 2  # (0, 0) first
    embedded = []
    original = micro["predictor"].set_image
    micro["predictor"].set_image = lambda *a, **k: embedded.append(1) or original(*a, **k)
    try:
        annotated = np.zeros_like(truth)
        annotated[2] = truth[2]
        result = session.propagate(volume, None, annotated, lambda *a: None)
        again = session.precompute(volume, None, lambda *a: None)
    finally:
        micro["predictor"].set_image = original
    assert embedded == [] and again.reused == n * per and again.computed == 0
    assert result.tiled and result.slices == tuple(range(5))
    assert iou3d(result.mask, truth) > 0.85
