"""The "Fine-tune SAM" widget, driven as a user would (tiny model; run under Xvfb)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_sam_ms._qt.finetune_data import SetupError, training_planes
from napari_sam_ms._qt.finetune_widget import FinetuneWidget

pytestmark = pytest.mark.gui
SIZE = 128  # the tiny model's input side
FAST = dict(correction_rounds=0, batch_images=1, objects_per_image=2)
FIGURES = r"held-out mIoU point \d\.\d{3}, box \d\.\d{3}"


@pytest.fixture(autouse=True)
def _sync(use_settings, monkeypatch):
    use_settings(sync=True)


@pytest.fixture(scope="module")
def cells():
    from napari_sam_ms.training.synthetic import render_sample

    return render_sample(1, "cells", (SIZE, SIZE), scale=1.0)


def _widget(viewer, out, steps: int = 3) -> FinetuneWidget:
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fine-tune SAM")
    w._model.model_type = "tiny"
    w["steps"].value = steps
    w["output_file"].value = str(out)
    w.extra_settings = dict(FAST)
    return w


def _params(path) -> dict[str, np.ndarray]:
    from napari_sam_ms.build_sam import build_sam_from_checkpoint

    model = build_sam_from_checkpoint(path)
    return {k: v.asnumpy() for k, v in model.parameters_dict().items()}


def test_start_trains_saves_and_logs_validation(make_napari_viewer, cells, tmp_path, messages):
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    viewer.add_labels(cells.labels, name="cells labels")
    out = tmp_path / "new folder" / "tuned.ckpt"
    w = _widget(viewer, out)
    w["run_buttons"]["start_button"].clicked.emit()
    assert out.is_file()
    params = _params(out)  # loads, with the tiny size stored in it
    assert any(k.startswith("mask_decoder.") for k in params)
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["steps_done"] == 3 and not log["cancelled"]
    assert log["config"]["correction_rounds"] == 0 and log["config"]["lr"] == pytest.approx(1e-4)
    assert log["config"]["train_encoder"] is False
    text = w.log_text
    assert "'cells' + 'cells labels' (1 plane)" in text
    assert "random weights" in text  # the tiny model's note
    for step in (0, 3):
        assert re.search(rf"^step {step}/3: .*{FIGURES}", text, re.M), text
    assert w["progress"].value == 3 and w["progress"].max == 3
    assert w["status"].value.startswith("Done")
    info = [m for k, m in messages if k == "info"]
    assert len(info) == 1 and str(out) in info[0] and "'Checkpoint'" in info[0]
    assert "Model: tiny" in info[0] and "Held-out mIoU" in info[0]
    buttons = w["run_buttons"]
    assert buttons["start_button"].enabled and not buttons["cancel_button"].enabled


def test_cancel_after_first_step_saves_what_it_has(make_napari_viewer, cells, tmp_path, messages):
    viewer = make_napari_viewer()
    image = viewer.add_image(cells.image, name="cells")
    labels = viewer.add_labels(cells.labels, name="cells labels")
    viewer.add_labels(np.zeros_like(cells.labels), name="empty")
    out = tmp_path / "cancelled.ckpt"
    w = _widget(viewer, out, steps=50)
    w["image_layer"].value, w["labels_layer"].value = image, labels
    w["pair_buttons"]["add_pair_button"].clicked.emit()
    w["pair_buttons"]["add_pair_button"].clicked.emit()  # the same pair once only
    assert w["pairs"].value == "cells  +  cells labels"
    w["labels_layer"].value = viewer.layers["empty"]  # the added pair is used, not this
    # the user presses Cancel once the bar shows the first step
    cancel = w["run_buttons"]["cancel_button"]
    w["progress"].changed.connect(lambda v: cancel.clicked.emit() if v >= 1 else None)
    w["run_buttons"]["start_button"].clicked.emit()
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["cancelled"] and log["steps_done"] == 1
    assert [v["step"] for v in log["validation"]] == [0, 1]  # figures for what was saved
    _params(out)
    (message,) = [m for k, m in messages if k == "info"]
    assert "cancelled after 1 of 50 steps" in message and str(out) in message
    assert w["status"].value == "Cancelled: 1 step saved"
    assert re.search(rf"^step 1/50: .*{FIGURES}", w.log_text, re.M)


def test_existing_output_is_not_replaced_without_overwrite(
    make_napari_viewer, cells, tmp_path, messages
):
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    viewer.add_labels(cells.labels, name="cells labels")
    out = tmp_path / "mine.ckpt"
    out.write_bytes(b"my precious model")
    w = _widget(viewer, out)
    w["run_buttons"]["start_button"].clicked.emit()
    assert out.read_bytes() == b"my precious model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.ckpt"]
    (error,) = [m for k, m in messages if k == "error"]
    assert str(out) in error and "exists" in error and "'Overwrite'" in error
    assert w["status"].value.startswith("Not started") and w.log_text == ""


def test_mismatched_shapes_are_refused(make_napari_viewer, cells, tmp_path, messages):
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    viewer.add_labels(cells.labels[:100], name="cropped labels")
    out = tmp_path / "m.ckpt"
    w = _widget(viewer, out)
    w["pair_buttons"]["add_pair_button"].clicked.emit()
    w["run_buttons"]["start_button"].clicked.emit()
    errors = [m for k, m in messages if k == "error"]
    assert len(errors) == 2 and errors[0] == errors[1]
    assert "(128, 128)" in errors[0] and "(100, 128)" in errors[0]
    assert "same pixels" in errors[0] and "New Labels Layer" in errors[0]
    assert w["pairs"].value.startswith("the Image + Labels above")  # not added
    assert not out.exists()


def test_no_labels_layer_or_no_objects(make_napari_viewer, cells, tmp_path, messages):
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    w = _widget(viewer, tmp_path / "m.ckpt")
    w["run_buttons"]["start_button"].clicked.emit()
    viewer.add_labels(np.zeros_like(cells.labels), name="empty")
    w["run_buttons"]["start_button"].clicked.emit()
    first, second = [m for k, m in messages if k == "error"]
    assert first.startswith("No training data") and "Labels layer" in first
    assert "'empty' has no objects" in second
    assert not (tmp_path / "m.ckpt").exists()


def test_pairs_forget_removed_layers(make_napari_viewer, cells, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    labels = viewer.add_labels(cells.labels, name="cells labels")
    w = _widget(viewer, tmp_path / "m.ckpt")
    w["pair_buttons"]["add_pair_button"].clicked.emit()
    assert len(w.training_pairs()) == 1 and "cells labels" in w["pairs"].value
    viewer.layers.remove(labels)
    assert "cells labels" not in w["pairs"].value
    with pytest.raises(SetupError, match="No training data"):
        w.training_pairs()


def test_trains_in_a_worker_thread(
    use_settings, make_napari_viewer, cells, tmp_path, qtbot, monkeypatch
):
    """Without NAPARI_SAM_MS_SYNC: loading and training off the UI thread, progress and log
    lines arrive through queued signals."""
    import threading

    from napari_sam_ms._qt import finetune_widget

    use_settings(sync=False)
    threads = []
    real = finetune_widget.fine_tune

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_widget, "fine_tune", recording)
    viewer = make_napari_viewer()
    viewer.add_image(cells.image, name="cells")
    viewer.add_labels(cells.labels, name="cells labels")
    out = tmp_path / "threaded.ckpt"
    w = _widget(viewer, out, steps=2)
    w["train_encoder"].value = True
    w["run_buttons"]["start_button"].clicked.emit()
    assert w._runner.busy and not w["run_buttons"]["start_button"].enabled
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=180_000)
    assert threads and threads[0] is not threading.main_thread()
    assert out.is_file() and w["progress"].value == 2
    assert json.loads(out.with_suffix(".json").read_text())["config"]["train_encoder"] is True
    assert re.search(rf"^step 2/2: .*{FIGURES}", w.log_text, re.M), w.log_text
    assert w["status"].value.startswith("Done")


def test_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-ms", "Fine-tune SAM")
    assert isinstance(widget, FinetuneWidget)
    assert widget["steps"].value == 200 and widget["learning_rate"].value == pytest.approx(1e-4)
    assert widget["held_out"].value == pytest.approx(0.2) and not widget["train_encoder"].value
    # the package ships the embedded model and this test machine has no official weights
    assert widget._holder.model_type == "micro"


# ----------------------------------------------------------------- planes of layers
def test_stack_gives_one_training_image_per_labelled_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    labels = np.zeros((4, 20, 30), np.int32)
    labels[1, 2:6, 3:9] = 1
    labels[3, 10:15, 10:20] = 5
    image = viewer.add_image(stack, contrast_limits=(0, 1500))
    images, planes = training_planes(image, viewer.add_labels(labels))
    assert len(images) == 2
    np.testing.assert_array_equal(planes[0], labels[1])
    np.testing.assert_array_equal(planes[1], labels[3])
    assert images[0].shape == (20, 30, 3) and images[0].dtype == np.uint8
    # through the layer's contrast limits, as the other widgets show it to SAM
    expected = np.clip(stack[1].astype(float) / 1500 * 255, 0, 255)
    assert np.abs(images[0][..., 0].astype(float) - expected).max() <= 1
    assert (images[1] == 255).all()  # plane 3 is above the limits


def test_rgb_image_and_shape_errors(make_napari_viewer):
    viewer = make_napari_viewer()
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    image = viewer.add_image(rgb, rgb=True)
    assert image.rgb
    labels = np.zeros((20, 30), np.int32)
    labels[5:10, 5:10] = 2
    images, planes = training_planes(image, viewer.add_labels(labels))
    assert len(images) == 1
    np.testing.assert_array_equal(images[0], rgb)
    with pytest.raises(SetupError, match=r"shape \(20, 30\) but Labels .* \(2, 20, 30\)"):
        training_planes(image, viewer.add_labels(np.zeros((2, 20, 30), np.int32)))
