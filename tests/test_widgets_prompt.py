"""The "Segment with prompts" widget, driven as a user would (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from sam_fakes import RADII, FakePredictor, disk, fake_holder

from napari_sam_ms._qt.prompt_widget import PromptWidget

pytestmark = pytest.mark.gui
BEST, SECOND = RADII[1], RADII[2]


@pytest.fixture(autouse=True)
def _sync(use_settings, monkeypatch):
    use_settings(sync=True)


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


def _widget(viewer, fake: FakePredictor | None = None, persistent: bool = False) -> PromptWidget:
    """The widget docked; with ``fake``, its holder gives that predictor (no model)."""
    holder = None if fake is None else fake_holder(fake, persistent)
    w = PromptWidget(viewer, holder=holder)
    viewer.window.add_dock_widget(w, name="Segment with prompts")
    return w


def _output(viewer):
    return viewer.layers["SAM labels"]


def test_creates_prompt_layers_and_previews_debounced(make_napari_viewer, qtbot, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    assert "SAM points" in viewer.layers and "SAM boxes" in viewer.layers
    assert viewer.layers.selection.active is viewer.layers["SAM points"]
    viewer.layers["SAM points"].add([20, 30])
    qtbot.waitUntil(
        lambda: w.preview_layer is not None and w.preview_layer.data.any(), timeout=3000
    )
    np.testing.assert_array_equal(w.preview_layer.data > 0, disk((60, 80), (20, 30), BEST))
    assert fake.set_image_calls == 1
    # moving the point recomputes (embedding reused)
    viewer.layers["SAM points"].data = np.array([[40.0, 50.0]])
    qtbot.waitUntil(lambda: w.preview_layer.data[40, 50] > 0, timeout=3000)
    assert fake.set_image_calls == 1 and len(fake.predict_calls) == 2
    # deleting it clears the preview
    viewer.layers["SAM points"].data = np.empty((0, 2))
    qtbot.waitUntil(lambda: not w.preview_layer.data.any(), timeout=3000)


def test_commit_writes_new_ids_clears_prompts_and_undo(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    viewer.layers["SAM points"].add([20, 30])
    w.commit()
    out = _output(viewer)
    np.testing.assert_array_equal(out.data == 1, disk((60, 80), (20, 30), BEST))
    assert len(viewer.layers["SAM points"].data) == 0
    assert not w.preview_layer.data.any()
    assert out.metadata["sam_prompts"][1]["points_xy"] == [[30.5, 20.5]]
    viewer.layers["SAM points"].add([45, 60])
    w.commit()
    assert set(np.unique(out.data)) == {0, 1, 2}
    assert out.data[45, 60] == 2
    out.undo()
    assert set(np.unique(out.data)) == {0, 1}
    w.undo_commit()
    assert not out.data.any()


def test_existing_labels_are_kept_unless_overwrite(make_napari_viewer, fake, messages):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    existing = np.zeros((60, 80), np.int32)
    existing[20, 25:36] = 7  # a line through the future object
    labels = viewer.add_labels(existing.copy(), name="mine")
    w = _widget(viewer, fake)
    w._output.value = labels
    viewer.layers["SAM points"].add([20, 30])
    w.commit()
    obj = disk((60, 80), (20, 30), BEST)
    assert (labels.data[20, 25:36] == 7).all()
    np.testing.assert_array_equal(labels.data == 8, obj & (existing == 0))
    # an object lying entirely on existing labels is not written
    labels.data[obj] = 7
    viewer.layers["SAM points"].add([20, 30])
    w.commit()
    assert labels.data.max() == 8 or (labels.data == 8).sum() == 0
    assert any("entirely on existing labels" in m for _, m in messages)
    # with overwrite the new object replaces them
    w._overwrite.value = True
    viewer.layers["SAM points"].add([20, 30])
    w.commit()
    assert (labels.data[obj] == labels.data.max()).all()
    labels.undo()
    assert (labels.data[20, 25:36] == 7).all()


def test_anisotropic_scale_and_translate(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((50, 70), np.uint16), scale=(2.0, 0.5), translate=(10, -4))
    image.contrast_limits = (0, 100)
    w = _widget(viewer, fake)
    points = viewer.layers["SAM points"]
    np.testing.assert_allclose(points.scale, image.scale)
    # give the prompt layer its own frame: points in world units
    points.scale, points.translate = (1.0, 1.0), (0.0, 0.0)
    row, col = 12, 40
    points.add([10 + 2.0 * row, -4 + 0.5 * col])
    w.commit()
    out = _output(viewer)
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    np.testing.assert_array_equal(out.data == 1, disk((50, 70), (row, col), BEST))
    assert fake.images[0].dtype == np.uint8 and fake.images[0].shape == (50, 70, 3)


def test_3d_stack_segments_the_shown_slice(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    stack = np.zeros((5, 40, 50), np.uint8)
    stack[3] = 200  # slices differ, so each gets its own embedding
    viewer.add_image(stack, scale=(3.0, 1.0, 1.0))
    w = _widget(viewer, fake)
    viewer.dims.set_current_step(0, 3)
    points = viewer.layers["SAM points"]
    points.add([3, 20, 25])
    points.add([1, 5, 5])  # another slice: ignored
    w.commit()
    out = _output(viewer)
    assert out.data.shape == (5, 40, 50)
    np.testing.assert_array_equal(out.data[3] == 1, disk((40, 50), (20, 25), BEST))
    assert not out.data[[0, 1, 2, 4]].any()
    assert len(fake.predict_calls) == 1 and len(fake.predict_calls[0]["points"]) == 1
    assert (fake.images[-1] == 200).all()


def test_two_boxes_make_two_objects_with_points_inside(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 90), np.uint8))
    w = _widget(viewer, fake)
    boxes = viewer.layers["SAM boxes"]
    boxes.add_rectangles(np.array([[[30, 40], [10, 40], [10, 20], [30, 20]]]))  # reversed
    boxes.add_rectangles(np.array([[[35, 60], [55, 85]]]))
    viewer.layers["SAM points"].add([45, 70])
    w.commit()
    out = _output(viewer)
    assert set(np.unique(out.data)) == {0, 1, 2}
    calls = fake.predict_calls
    assert calls[0]["points"] is None
    np.testing.assert_allclose(calls[0]["box"], [20.5, 10.5, 40.5, 30.5])
    np.testing.assert_allclose(calls[1]["points"], [[70.5, 45.5]])
    assert out.data[20, 30] == 1 and out.data[45, 70] == 2
    assert len(boxes.data) == 0


def test_multimask_cycles_candidates(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    viewer.layers["SAM points"].add([30, 40])
    w.update_preview()
    assert (w.preview_layer.data > 0).sum() == disk((60, 80), (30, 40), BEST).sum()
    assert w._candidate.value.startswith("best")
    calls = len(fake.predict_calls)
    w.next_mask()
    assert (w.preview_layer.data > 0).sum() == disk((60, 80), (30, 40), SECOND).sum()
    assert len(fake.predict_calls) == calls  # no model call
    w.commit()
    assert (_output(viewer).data == 1).sum() == disk((60, 80), (30, 40), SECOND).sum()


def test_toggle_background_and_keys(make_napari_viewer, fake):
    from app_model.types import KeyBinding

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer, fake)
    points = viewer.layers["SAM points"]
    points.add([30, 40])
    points.keymap[KeyBinding.from_str("T")](points)
    assert w._point_label.value == 0
    points.add([31, 41])
    assert list(points.features["label"]) == [1, 0]
    np.testing.assert_allclose(points.face_color[1], [1, 0, 0, 1])
    points.keymap[KeyBinding.from_str("C")](points)
    assert "SAM labels" in viewer.layers
    np.testing.assert_array_equal(fake.predict_calls[-1]["labels"], [1, 0])


def test_messages_for_bad_states(make_napari_viewer, fake, messages):
    viewer = make_napari_viewer()
    w = _widget(viewer, fake)
    w.update_preview()
    assert messages and "No image layer" in messages[-1][1]
    viewer.add_image(np.zeros((60, 80), np.uint8))
    points = viewer.layers["SAM points"]
    points.add([[200, 300], [10, 10]])
    w.update_preview()
    assert any("outside the image" in m for k, m in messages if k == "warning")
    assert fake.predict_calls and len(fake.predict_calls[-1]["points"]) == 1
    viewer.add_image(np.zeros((64, 64, 2), np.uint8), name="two channels")
    w._image.value = viewer.layers["two channels"]
    w.update_preview()
    assert "channels" in messages[-1][1]


def test_model_load_failure_says_why_and_what_to_do(
    use_settings, make_napari_viewer, messages, monkeypatch
):
    use_settings(weights_url="http://127.0.0.1:9/nothing")
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer)
    w._model.model_type = "vit_b"
    viewer.layers["SAM points"].add([30, 40])
    w.update_preview()
    kind, text = messages[-1]
    assert kind == "error" and "Could not load SAM vit_b" in text and "Checkpoint" in text
    assert not w._runner.busy


def test_multiscale_uses_a_level_that_fits(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    base = np.zeros((128, 192), np.uint8)
    viewer.add_image([base, base[::2, ::2], base[::4, ::4]], multiscale=True)
    w = _widget(viewer, fake)
    w.max_side = 100
    viewer.layers["SAM points"].add([64, 96])  # level-0 pixel
    w.commit()
    out = _output(viewer)
    assert fake.images[0].shape[:2] == (64, 96)
    assert out.data.shape == (64, 96)
    np.testing.assert_allclose(out.scale, [2, 2])
    np.testing.assert_allclose(out.translate, [0.5, 0.5])
    # level-0 (64, 96) lies in level-1 pixel (31.75, 47.75) -> disk centred there
    ys, xs = np.nonzero(out.data)
    assert abs(ys.mean() - 31.75) < 0.6 and abs(xs.mean() - 47.75) < 0.6


def test_real_tiny_model_end_to_end_in_a_thread(
    use_settings, make_napari_viewer, qtbot, monkeypatch
):
    """No fakes, no sync mode: the worker embeds, predicts, and commit writes labels."""
    from napari_sam_ms.predictor import SamPredictor

    use_settings(sync=False)
    calls = {"set_image": 0}
    original = SamPredictor.set_image

    def counting(self, *args, **kwargs):
        calls["set_image"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "set_image", counting)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (48, 64), dtype=np.uint8))
    w = _widget(viewer)
    w._model.model_type = "tiny"
    viewer.layers["SAM points"].add([24, 32])
    qtbot.waitUntil(lambda: w._prediction is not None, timeout=60000)
    assert not w._runner.busy
    w.commit()
    out = _output(viewer)
    assert out.data.shape == (48, 64) and out.data.max() <= 1
    # second round on the same image: embedding from the cache
    viewer.layers["SAM points"].add([10, 10])
    w.commit()
    qtbot.waitUntil(
        lambda: not w._runner.busy and not viewer.layers["SAM points"].data.size, timeout=60000
    )
    assert calls["set_image"] == 1


def test_embedding_reused_from_disk_by_a_new_widget(
    use_settings, make_napari_viewer, fake, monkeypatch, tmp_path
):
    use_settings(cache_dir=str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(np.full((40, 40), 9, np.uint8))
    w1 = _widget(viewer, fake, persistent=True)
    viewer.layers["SAM points"].add([20, 20])
    w1.update_preview()
    assert fake.set_image_calls == 1 and list(tmp_path.glob("*.npz"))
    w2 = PromptWidget(viewer, holder=fake_holder(fake, persistent=True))
    w2.points_layer.add([10, 10])
    w2.update_preview()
    assert fake.set_image_calls == 1 and fake.set_embedding_calls == 1


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba_images(make_napari_viewer, fake, channels):
    viewer = make_napari_viewer()
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, channels), dtype=np.uint8)
    viewer.add_image(rgb, rgb=True)
    w = _widget(viewer, fake)
    assert w.points_layer.ndim == 2
    w.points_layer.add([10, 12])
    w.commit()
    np.testing.assert_array_equal(fake.images[0], rgb[..., :3])
    assert _output(viewer).data.shape == (30, 40)
