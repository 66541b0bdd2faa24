"""The prompt widget's modes and its robustness: one object per point, any prompt layer,
deleted layers, errors in layer edits, inverted model input, following the viewer (issue 23,
items 2, 4, 5 and 6). Run under Xvfb."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sam_fakes import RADII, FakePredictor, disk, fake_holder

from napari_sam_ms._qt.prompt_layers import MARKER_PX
from napari_sam_ms._qt.prompt_widget import PromptWidget

pytestmark = pytest.mark.gui
BEST = RADII[1]


class BatchFake(FakePredictor):
    """The disk predictor with ``predict_batch`` (one entry in ``batch_sizes`` per call)."""

    def __init__(self, empty: bool = False) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []
        self.empty = empty

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        masks, scores, low = super().predict(point_coords, point_labels, box, multimask_output)
        if self.empty:  # what the micro model gave on a dark-on-bright image
            return np.zeros_like(masks), np.array([0.19, 0.12, 0.15], np.float32), low
        return masks, scores, low

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, **_):
        n = len(point_coords if point_coords is not None else boxes)
        self.batch_sizes.append(n)
        outs = [
            self.predict(
                None if point_coords is None else point_coords[i],
                None if point_labels is None else point_labels[i],
                None if boxes is None else boxes[i],
            )
            for i in range(n)
        ]
        return tuple(np.stack([o[k] for o in outs]) for k in range(3))


@pytest.fixture(autouse=True)
def _sync(use_settings):
    use_settings(sync=True)


@pytest.fixture
def fake() -> BatchFake:
    return BatchFake()


def _widget(viewer, fake) -> PromptWidget:
    w = PromptWidget(viewer, holder=fake_holder(fake))
    viewer.window.add_dock_widget(w, name="Segment with prompts")
    return w


def _press(layer, key: str) -> None:
    from app_model.types import KeyBinding

    layer.keymap[KeyBinding.from_str(key)](layer)


# ---------------------------------------------------------------- item 4: one object per point
def test_one_object_per_point_is_one_batched_call_and_commits_ids(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 90), np.uint8))
    w = _widget(viewer, fake)
    points = w.points_layer
    clicks = [(15, 20), (40, 70), (50, 15)]
    points.add(np.array(clicks, float))
    w.update_preview()
    assert len(np.unique(w.preview_layer.data)) == 2  # SAM's default: one object
    _press(points, "O")
    assert w._per_point.value is True
    w.update_preview()
    assert fake.batch_sizes == [3]  # three objects, one model call
    assert set(np.unique(w.preview_layer.data)) == {0, 1, 2, 3}
    assert "3 objects" in w._candidate.value
    w.toggle_label()
    points.add([42, 66])  # background, nearest to the second click
    w.update_preview()
    # objects 1 and 3 (one point each) share a call; object 2 has two points
    assert fake.batch_sizes == [3, 2]
    np.testing.assert_array_equal(fake.predict_calls[-1]["labels"], [1, 0])
    w.commit()
    out = viewer.layers["SAM labels"]
    for label, centre in enumerate(clicks, start=1):
        np.testing.assert_array_equal(out.data == label, disk((60, 90), centre, BEST))
    assert out.metadata["sam_prompts"][2]["point_labels"] == [1, 0]
    _press(viewer.layers["SAM boxes"], "O")
    assert w._per_point.value is False


# ---------------------------------------------------------------- item 5: prompt layers
def test_any_points_layer_without_label_feature_is_foreground(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    mine = viewer.add_points(np.empty((0, 2)), name="my points")
    w.reset_choices()
    w._points_choice.value = mine
    assert w.points_layer is mine
    assert w._points_choice.value is mine
    w.toggle_label()  # setting feature defaults on a layer without 'label' must not fail
    mine.add([20, 30])
    mine.add([40, 50])
    w.update_preview()
    np.testing.assert_array_equal(fake.predict_calls[-1]["labels"], [1, 1])
    assert w._status.value == "Ready"
    _press(mine, "C")  # our keys are bound on the chosen layer
    assert viewer.layers["SAM labels"].data.max() == 1


def test_sam_points_without_label_feature_do_not_raise(make_napari_viewer, fake, messages):
    """As seen: KeyError 'label' on every edit, then ValueError about feature defaults."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    points = w.points_layer
    points.features = pd.DataFrame()  # e.g. replaced by a script
    w.toggle_label()
    w.toggle_label()
    points.add([20, 30])
    w.update_preview()
    np.testing.assert_array_equal(fake.predict_calls[-1]["labels"], [1])
    assert not [m for k, m in messages if k == "error"]


def test_shapes_layer_of_the_user_gives_boxes(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    mine = viewer.add_shapes(np.array([[[10, 10], [30, 30]]]), shape_type="rectangle")
    w.reset_choices()
    w._boxes_choice.value = mine
    w.commit()
    np.testing.assert_allclose(fake.predict_calls[-1]["box"], [10.5, 10.5, 30.5, 30.5])


def test_deleted_prompt_layer_is_recreated_and_said(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    old = w.points_layer
    viewer.layers.remove(old)
    qtbot.waitUntil(lambda: "SAM points" in viewer.layers, timeout=3000)
    assert w.points_layer is viewer.layers["SAM points"] and w.points_layer is not old
    assert w._points_choice.value is w.points_layer
    assert "deleted" in w._status.value
    w.points_layer.add([20, 30])
    w.commit()
    assert viewer.layers["SAM labels"].data.max() == 1
    # a chosen layer of the user's, deleted: back to the widget's own
    mine = viewer.add_points(np.empty((0, 2)), name="mine")
    w.reset_choices()
    w._points_choice.value = mine
    viewer.layers.remove(mine)
    qtbot.waitUntil(lambda: w.points_layer is viewer.layers["SAM points"], timeout=3000)
    assert "'mine' deleted" in w._status.value


def test_clearing_all_layers_ends_and_waits_for_an_image(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    viewer.layers.clear()
    qtbot.wait(50)
    assert len(viewer.layers) == 0 and w.points_layer is None
    viewer.add_image(np.zeros((30, 40), np.uint8))
    qtbot.waitUntil(lambda: "SAM points" in viewer.layers, timeout=3000)


def test_no_traceback_from_a_layer_edit(make_napari_viewer, qtbot, fake, messages, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(w._prompts, "collect", broken)
    w.points_layer.add([20, 30])  # the debounce timer calls update_preview in Qt's loop
    qtbot.waitUntil(lambda: "Failed" in w._status.value, timeout=3000)
    assert [k for k, m in messages if "boom" in m] == ["error"]
    assert "reading the prompts" in w._status.value


def test_odd_label_features_are_read_not_raised(make_napari_viewer, fake, messages):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    mine = viewer.add_points(
        np.array([[20.0, 30.0], [40.0, 50.0]]),
        features=pd.DataFrame({"label": ["foreground", "background"]}),
        name="texts",
    )
    w.reset_choices()
    w._points_choice.value = mine
    w.toggle_label()  # an int default for a text column: left alone
    w.update_preview()
    np.testing.assert_array_equal(fake.predict_calls[-1]["labels"], [1, 0])
    assert not [m for k, m in messages if k == "error"]


# ---------------------------------------------------------------- item 2: dark on bright
def _bright_field() -> np.ndarray:
    rgb = np.full((64, 80, 3), 235, np.uint8)
    rgb[disk((64, 80), (20, 25), 7)] = (70, 40, 110)  # dark nuclei on white
    rgb[disk((64, 80), (45, 60), 8)] = (60, 30, 100)
    return rgb


def test_invert_changes_the_model_input_only(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    rgb = _bright_field()
    layer = viewer.add_image(rgb.copy(), rgb=True)
    w = _widget(viewer, fake)
    assert "dark-on-bright" in w._status.value  # the suggestion, before any click
    w.points_layer.add([20, 25])
    w.update_preview()
    w._invert.value = True
    w.update_preview()
    np.testing.assert_array_equal(fake.images[-1], 255 - rgb)
    np.testing.assert_array_equal(layer.data, rgb)
    assert fake.set_image_calls == 2  # its own embedding
    w._invert.value = False
    w.update_preview()
    assert fake.set_image_calls == 2  # the plain one comes from the cache
    w._invert.value = True
    w.commit()
    assert viewer.layers["SAM labels"].metadata["sam_prompts"][1]["inverted"] is True


def test_empty_mask_says_why_and_what_to_try(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_bright_field(), rgb=True)
    w = _widget(viewer, BatchFake(empty=True))
    w.points_layer.add([20, 25])
    w.update_preview()
    assert w._status.value == (
        "Empty mask (predicted IoU 0.19): the image looks dark-on-bright; try Invert."
    )
    w._invert.value = True
    w.update_preview()
    assert "Empty mask" in w._status.value and "try Invert" not in w._status.value


# ---------------------------------------------------------------- item 6: following the user
def test_new_image_is_followed_and_clicks_still_land_in_points(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((60, 80), np.uint8), name="first")
    w = _widget(viewer, fake)
    w.points_layer.add([20, 30])
    w.commit()
    assert w._status.value.startswith("Committed")
    second = viewer.add_image(np.zeros((50, 70), np.uint8), name="second")
    qtbot.waitUntil(lambda: viewer.layers.selection.active is w.points_layer, timeout=3000)
    assert w._image.value is second
    assert w.points_layer.mode == "add"
    assert w._status.value == "Ready"  # nothing said about "first" is kept
    # selecting an image in the layer list chooses it, and leaves it selected
    viewer.layers.selection.active = first
    assert w._image.value is first
    assert viewer.layers.selection.active is first


def test_markers_have_a_fixed_screen_size(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4000, 4000), np.uint8))
    w = _widget(viewer, fake)
    assert tuple(w.points_layer.canvas_size_limits) == (MARKER_PX, MARKER_PX)
    viewer.scene.camera.zoom = 2.0
    assert w.points_layer.current_size == pytest.approx(MARKER_PX / 2.0)


def test_view_is_fitted_once_after_docking(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((60, 80), np.uint8))
    viewer.scene.camera.zoom = 0.01
    _widget(viewer, fake)
    qtbot.waitUntil(lambda: viewer.scene.camera.zoom > 0.5, timeout=3000)


def test_widget_taken_out_of_its_dock_stops_following(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    _widget(viewer, fake)
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    viewer.add_image(np.zeros((30, 40), np.uint8))
    qtbot.wait(50)
    assert [layer.name for layer in viewer.layers] == ["Image"]
