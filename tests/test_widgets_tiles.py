"""Tiles in the widgets: large planes answered at full resolution (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from sam_fakes import RADII, FakePredictor, disk, fake_holder

from napari_sam_ms._qt.prompt_widget import PromptWidget
from napari_sam_ms._qt.tile_controls import model_geometry
from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.interaction import ModelHolder

pytestmark = pytest.mark.gui
SHAPE = (1500, 1400)
DISKS = [(1200, 1100), (300, 200), (700, 800), (1400, 150), (100, 1300)]
RADIUS = 14


def _plane(shape=SHAPE, disks=DISKS) -> np.ndarray:
    img = np.full(shape, 20, np.uint8)
    for centre in disks:
        img[disk(shape, centre, RADIUS)] = 220
    return img


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(autouse=True)
def _sync(use_settings):
    use_settings(sync=True)


@pytest.fixture(scope="module")
def micro() -> ModelHolder:
    """The embedded model (mirror-averaged, as the widget makes it), shared by the tests."""
    return ModelHolder("micro")


def _prompt(viewer, holder) -> PromptWidget:
    w = PromptWidget(viewer, holder=holder, cache=EmbeddingCache(cache_dir=False))
    viewer.window.add_dock_widget(w, name="Segment with prompts")
    return w


def test_click_far_from_origin_is_full_resolution_from_one_tile(make_napari_viewer, micro):
    viewer = make_napari_viewer()
    viewer.add_image(_plane(), name="big")
    w = _prompt(viewer, micro)
    assert w._tiles.summary.value.startswith("Tiling on (auto): 8x8 tiles of 192 px, halo 32")
    viewer.layers["SAM points"].add([1200, 1100])
    w.commit()
    out = viewer.layers["SAM labels"]
    assert out.data.shape == SHAPE and out.data.dtype == np.int32
    truth = disk(SHAPE, (1200, 1100), RADIUS)
    assert _iou(out.data == 1, truth) > 0.85
    assert set(np.unique(out.data)) == {0, 1}
    assert w._session.tiled.tiles.embedded == 1  # only the tile holding the click
    log = out.metadata["sam_prompts"][1]
    assert log["level"] == 0 and log["crop_yxyx"] == [1120, 928, 1376, 1184]
    out.undo()
    assert not out.data.any()


def test_preview_is_the_plane_or_on_large_planes_a_crop_at_the_right_place(
    make_napari_viewer, micro
):
    """Planes up to 2048 x 2048 px get a whole-plane preview; larger ones only the tile's
    outer area, placed where it lies (scale and translate honoured)."""
    viewer = make_napari_viewer()
    viewer.add_image(_plane(), name="big")
    w = _prompt(viewer, micro)
    viewer.layers["SAM points"].add([700, 800])
    w.update_preview()
    assert w.preview_layer.data.shape == SHAPE
    assert _iou(w.preview_layer.data > 0, disk(SHAPE, (700, 800), RADIUS)) > 0.85

    shape = (2600, 2200)
    viewer = make_napari_viewer()
    viewer.add_image(_plane(shape, [(2500, 2150)]), name="larger", scale=(0.5, 0.5))
    w = _prompt(viewer, micro)
    points = viewer.layers["SAM points"]
    points.add(points.world_to_data([2500 * 0.5, 2150 * 0.5]))
    w.update_preview()
    prev = w.preview_layer
    assert prev.data.shape == (256, 256)  # one tile's outer area, not the plane
    np.testing.assert_allclose(prev.scale, (0.5, 0.5))
    y0, x0 = (np.asarray(prev.translate) / 0.5).astype(int)
    assert (y0 + 256, x0 + 256) == shape  # the corner tile's outer area, at full size
    full = np.zeros(shape, bool)
    full[y0 : y0 + 256, x0 : x0 + 256] = prev.data > 0
    assert _iou(full, disk(shape, (2500, 2150), RADIUS)) > 0.85
    assert w._status.value == "Ready"


def test_multiscale_layer_is_segmented_at_level_0(make_napari_viewer, micro):
    img = _plane()
    viewer = make_napari_viewer()
    viewer.add_image([img, img[::2, ::2], img[::4, ::4]], multiscale=True, name="pyramid")
    w = _prompt(viewer, micro)
    w.max_side = 512  # untiled, level 2 would be used
    viewer.layers["SAM points"].add([300, 200])
    w.commit()
    out = viewer.layers["SAM labels"]
    assert out.data.shape == SHAPE
    assert _iou(out.data == 1, disk(SHAPE, (300, 200), RADIUS)) > 0.85
    assert out.metadata["sam_prompts"][1]["level"] == 0


def test_stack_slices_share_one_cache_with_the_slice_in_the_index(make_napari_viewer, micro):
    shape = (600, 600)
    stack = np.stack([_plane(shape, [(450, 420)]), _plane(shape, [(150, 100)])])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    w = _prompt(viewer, micro)
    viewer.layers["SAM points"].add([1, 150, 100])
    w.commit()
    out = viewer.layers["SAM labels"]
    assert out.data.shape == stack.shape and not out.data[0].any()
    assert _iou(out.data[1] == 1, disk(shape, (150, 100), RADIUS)) > 0.85
    tiles = w._session.tiled.tiles
    assert tiles.prefix == (1,) and tiles.prefix_shape == (2,) and tiles.stack_id
    assert tiles.embedded == 1


def test_tiling_off_keeps_todays_whole_plane(make_napari_viewer):
    fake = FakePredictor()
    viewer = make_napari_viewer()
    viewer.add_image(_plane())
    w = _prompt(viewer, fake_holder(fake))
    w._tiles.mode.value = "off"
    assert w._tiles.summary.value.startswith("Tiling off: the 1500x1400 plane")
    viewer.layers["SAM points"].add([1200, 1100])
    w.commit()
    assert fake.set_image_calls == 1 and fake.images[0].shape == (*SHAPE, 3)
    out = viewer.layers["SAM labels"]
    np.testing.assert_array_equal(out.data == 1, disk(SHAPE, (1200, 1100), RADII[1]))
    assert w._session.tiled.tiles is None


def test_auto_leaves_small_planes_untiled_and_zoom_is_suggested(make_napari_viewer):
    fake = FakePredictor()
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((300, 300), np.uint8))
    w = _prompt(viewer, fake_holder(fake))
    tiles = w._tiles
    assert tiles.choose((300, 300))[0] is None  # the fake's "tiny"-free default: SAM 1024
    tiles.size.value = 6
    tiles.suggest()
    assert tiles.zoom.value == 4 and "zoom 4 suggested" in tiles.summary.value
    assert tiles.choose((300, 300))[0] is not None  # a zoom tiles even a small plane
    assert tiles.zoom.tooltip.startswith("Upsample") and tiles.halo.tooltip.startswith("Margin")
    _, patch = model_geometry(w._holder)  # a tile narrower than one embedding cell
    tiles.mode.value, tiles.zoom.value, tiles.halo.value, tiles.tile.value = "on", 1, 0, patch // 2
    assert f"smaller than the model's {patch}-pixel patch grid" in tiles.summary.value
    with pytest.raises(ValueError, match=f"at least {patch} px"):
        tiles.choose((300, 300))


def test_automatic_widget_with_tiles_labels_the_full_plane_and_refilters(
    make_napari_viewer, micro, monkeypatch
):
    from napari_sam_ms._qt.auto_widget import AutoWidget
    from napari_sam_ms.amg_refine import refilter
    from napari_sam_ms.predictor import SamPredictor

    shape = (600, 600)
    centres = [(96, 96), (96, 480), (288, 288), (480, 96), (480, 480)]  # one per tile row/col
    img = np.full(shape, 20, np.uint8)
    for c in centres:
        img[disk(shape, c, 24)] = 220
    viewer = make_napari_viewer()
    viewer.add_image(img, name="field")
    w = AutoWidget(viewer, holder=micro, cache=EmbeddingCache(cache_dir=False))
    viewer.window.add_dock_widget(w)
    w._tiles.mode.value = "on"
    assert w._tiles.summary.value.startswith("Tiling on: 4x4 tiles of 192 px")
    w["points_per_side"].value = 8
    w["mirror_average"].value = False
    w.run()
    layer = w.labels_layer
    assert layer is not None and layer.data.shape == shape
    cands = w._candidates
    assert cands.tiles is not None and len(cands.crop_boxes) == 16
    for c in centres:  # every disk labelled once and whole, wherever its tile
        assert _iou(layer.data == layer.data[c], disk(shape, c, 24)) > 0.8, c
    records = refilter(cands, **w.filter_settings())
    assert records and all(min(r["bbox"][2:]) > 0 for r in records)  # no zero-size object
    assert "objects from" in w._status.value
    calls = {"n": 0}
    real = SamPredictor.set_image
    monkeypatch.setattr(
        SamPredictor, "set_image", lambda *a, **k: (calls.update(n=1), real(*a, **k))
    )
    n_before = int(layer.data.max())
    w["min_mask_region_area"].value = 0
    w["pred_iou_thresh"].value = 0.99  # re-filters at once, no model call
    w.refilter()
    assert calls["n"] == 0 and int(layer.data.max()) < n_before
