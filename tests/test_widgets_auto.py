"""The "Automatic segmentation" widget (run under Xvfb)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sam_fakes import disk

from napari_sam_ms import amg_refine
from napari_sam_ms._qt import auto_widget
from napari_sam_ms._qt.auto_widget import TOOLTIPS, AutoWidget
from napari_sam_ms.amg_refine import Candidates
from napari_sam_ms.amg_settings import (
    META_DEFAULTS,
    default_text,
    help_text,
    model_defaults,
    names,
)
from napari_sam_ms.automatic_mask_generator import GenerationCancelled
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import LoadedModel
from napari_sam_ms.utils.amg import MaskData, batched_mask_to_box, mask_to_rle

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _sync(use_settings, monkeypatch):
    use_settings(sync=True)


def _fake_candidates(shape):
    """Three disks: big (iou 0.95), medium (0.80), small (0.90), one crop."""
    masks = np.stack(
        [disk(shape, (20, 20), 12), disk(shape, (20, 60), 8), disk(shape, (45, 40), 4)]
    )
    data = MaskData(
        iou_preds=np.array([0.95, 0.80, 0.90], np.float32),
        stability_score=np.array([0.99, 0.99, 0.99], np.float32),
        boxes=batched_mask_to_box(masks),
        crop_boxes=np.tile([0, 0, shape[1], shape[0]], (3, 1)),
        points=np.zeros((3, 2)),
        rles=mask_to_rle(masks),
    )
    return Candidates(shape, [[0, 0, shape[1], shape[0]]], [data], {})


@pytest.fixture
def fake_collect(monkeypatch):
    calls = []

    def collect(model, image, progress=None, **run):
        calls.append(run)
        if progress is not None:
            progress(0, 1)
            progress(1, 1)
        return _fake_candidates(image.shape[:2])

    monkeypatch.setattr(auto_widget, "collect_candidates", collect)
    return calls


def _fake_load(model_type, checkpoint):
    return LoadedModel(object(), model_type, None, f"fake:{model_type}")


def _widget(viewer, model: str = "vit_b", fake: bool = True) -> AutoWidget:
    """The widget on an official model (Meta's filter defaults), models loaded by fakes."""
    holder = ModelHolder("vit_b", loader=_fake_load, predictor_factory=lambda loaded: None)
    w = AutoWidget(viewer, holder=holder if fake else None)
    w._model.model_type = model
    viewer.window.add_dock_widget(w, name="Automatic segmentation")
    return w


def test_controls_have_meta_defaults_and_tooltips(make_napari_viewer):
    """Every exposed setting of the table has a control with Meta's default, the table's
    range and its help text as tooltip."""
    w = _widget(make_napari_viewer())
    settings = {**w.run_settings(), **w.filter_settings()}
    exposed = names(exposed=True)
    assert list(w.run_settings()) == names("run", exposed=True)
    assert list(w.filter_settings()) == names("filter", exposed=True)
    assert set(TOOLTIPS) == set(settings) == set(exposed)
    for name in exposed:
        assert settings[name] == pytest.approx(META_DEFAULTS[name], abs=1e-4), name
        assert w[name].tooltip.startswith(help_text(name)), name
        assert f"Default: {default_text(name, 'micro')}." in w[name].tooltip, name
    assert w["points_per_side"].max == 256 and w["pred_iou_thresh"].step == 0.01
    w["pred_iou_thresh"].value = 0.3
    w.reset_defaults()
    assert w["pred_iou_thresh"].value == pytest.approx(0.88)


def test_micro_model_brings_its_own_defaults(make_napari_viewer, tmp_path):
    """The embedded micro model keeps almost nothing with Meta's thresholds: choosing it sets
    the settings chosen for it (also for a fine-tuned micro checkpoint, as the loader
    decides); official models get Meta's."""
    micro = model_defaults("micro")
    flt = names("filter", exposed=True)
    assert any(micro[k] != META_DEFAULTS[k] for k in flt)
    meta_filters = {k: META_DEFAULTS[k] for k in flt}
    w = _widget(make_napari_viewer(), model="micro")
    assert w.filter_settings() == pytest.approx({k: micro[k] for k in flt})
    assert w.run_settings()["mirror_average"] is True  # its masks averaged over mirrors
    w._model.model_type = "vit_b"
    assert w.filter_settings() == pytest.approx(meta_filters)
    assert w.run_settings()["mirror_average"] is False  # Meta's behaviour
    w["points_per_side"].value = 12  # run settings the user set stay when the model changes
    w._model.model_type = "micro"
    assert w.filter_settings() == pytest.approx({k: micro[k] for k in flt})
    assert w.run_settings()["points_per_side"] == 12
    w["pred_iou_thresh"].value = 0.99
    w["mirror_average"].value = False  # the user may turn it off (4x faster)
    assert w.run_settings()["mirror_average"] is False
    w.reset_defaults()
    assert {**w.run_settings(), **w.filter_settings()} == pytest.approx(
        {k: micro[k] for k in names(exposed=True)}
    )
    w._model.checkpoint = tmp_path / "my_finetuned.ckpt"  # a fine-tuned micro model
    assert w.filter_settings() == pytest.approx({k: micro[k] for k in flt})


def test_run_writes_labels_largest_first_and_sliders_refilter_without_model(
    make_napari_viewer, fake_collect, qtbot
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="cells")
    w = _widget(viewer)
    w.run()
    layer = viewer.layers["SAM auto (cells)"]
    # Meta's defaults keep only iou > 0.88: the big and the small disk; ids by area
    assert set(np.unique(layer.data)) == {0, 1, 2}
    assert layer.data[20, 20] == 1 and layer.data[45, 40] == 2 and layer.data[20, 60] == 0
    w["pred_iou_thresh"].value = 0.5
    qtbot.waitUntil(lambda: layer.data[20, 60] == 2, timeout=2000)
    assert layer.data[45, 40] == 3
    w["pred_iou_thresh"].value = 0.99
    qtbot.waitUntil(lambda: not layer.data.any(), timeout=2000)
    assert len(fake_collect) == 1  # the model ran once
    w.run()  # same image and settings: candidates are reused
    assert len(fake_collect) == 1


def test_no_output_tells_what_to_change(make_napari_viewer, fake_collect, messages):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8))
    w = _widget(viewer)
    w["stability_score_thresh"].value = 1.0
    w["pred_iou_thresh"].value = 0.99
    w.run()
    assert any("no mask passes" in m for _, m in messages)


def test_3d_writes_the_shown_slice(make_napari_viewer, fake_collect):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 60, 80), np.uint8), name="stack", translate=(0, 5, 5))
    w = _widget(viewer)
    viewer.dims.set_current_step(0, 2)
    w.run()
    layer = viewer.layers["SAM auto (stack)"]
    assert layer.data.shape == (4, 60, 80)
    np.testing.assert_allclose(layer.translate, [0, 5, 5])
    assert layer.data[2].any() and not layer.data[[0, 1, 3]].any()


def test_no_image_message(make_napari_viewer, messages):
    w = _widget(make_napari_viewer())
    w.run()
    assert messages[-1][0] == "error" and "No image layer" in messages[-1][1]


def test_cancel_leaves_no_layer_and_stops_the_worker(
    use_settings, make_napari_viewer, qtbot, monkeypatch
):
    use_settings(sync=False)
    started = threading.Event()
    stopped = threading.Event()

    def slow_collect(model, image, progress=None, **run):
        started.set()
        for i in range(500):
            if progress(i, 500) is False:
                stopped.set()
                raise GenerationCancelled("cancelled")
            time.sleep(0.01)
        return _fake_candidates(image.shape[:2])

    monkeypatch.setattr(auto_widget, "collect_candidates", slow_collect)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="cells")
    w = _widget(viewer)
    w.run()
    assert started.wait(10)
    assert w._cancel_btn.enabled
    w._cancel_btn.clicked.emit()  # the user presses Cancel
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=10000)
    assert stopped.is_set()
    assert "SAM auto (cells)" not in viewer.layers
    assert w._status.value == "Cancelled" and not w._cancel_btn.enabled


def test_second_run_replaces_the_first(use_settings, make_napari_viewer, qtbot, monkeypatch):
    use_settings(sync=False)
    runs = []

    def collect(model, image, progress=None, **run):
        runs.append(run["points_per_side"])
        for i in range(200):
            if progress(i, 200) is False:
                raise GenerationCancelled("replaced")
            time.sleep(0.005)
        return _fake_candidates(image.shape[:2])

    monkeypatch.setattr(auto_widget, "collect_candidates", collect)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="cells")
    w = _widget(viewer)
    w.run()
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=5000)
    w["points_per_side"].value = 8
    w.run()
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=20000)
    assert runs == [32, 8]  # one after the other, never both at once
    assert "SAM auto (cells)" in viewer.layers


def test_real_tiny_model_refilter_does_not_call_model(make_napari_viewer, monkeypatch):
    from napari_sam_ms.predictor import SamPredictor

    count = {"decode": 0}

    def counted(original):
        def counting(self, *args, **kwargs):
            count["decode"] += 1
            return original(self, *args, **kwargs)

        return counting

    # Both ways into the decoder (whole-image mode uses decode_selected).
    for name in ("decode", "decode_selected"):
        monkeypatch.setattr(SamPredictor, name, counted(getattr(SamPredictor, name)))
    spy = []
    real_refilter = amg_refine.refilter_labels
    monkeypatch.setattr(
        auto_widget, "refilter_labels", lambda c, **f: spy.append(f) or real_refilter(c, **f)
    )
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    viewer.add_image(rng.integers(0, 255, (40, 56), dtype=np.uint8), name="noise")
    w = _widget(viewer, model="tiny", fake=False)
    w["points_per_side"].value = 4
    w["pred_iou_thresh"].value = 0.0
    w["stability_score_thresh"].value = 0.0
    w.run()
    after_run = count["decode"]
    assert after_run >= 1
    layer = viewer.layers["SAM auto (noise)"]
    assert layer.data.shape == (40, 56) and layer.data.max() >= 1
    n_all = layer.data.max()
    w["box_nms_thresh"].value = 0.1
    w.refilter()
    w["min_mask_region_area"].value = 20
    w.refilter()
    assert count["decode"] == after_run
    assert layer.data.max() <= n_all and len(spy) >= 3


def test_each_image_gets_its_own_result_layer(make_napari_viewer, fake_collect):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="a")
    viewer.add_image(np.ones((60, 80), np.uint8), name="b")
    w = _widget(viewer)
    w._image.value = viewer.layers["a"]
    w.run()
    w._image.value = viewer.layers["b"]
    w.run()
    assert "SAM auto (a)" in viewer.layers and "SAM auto (b)" in viewer.layers


def test_closing_the_widget_while_running_is_clean(
    use_settings, make_napari_viewer, qtbot, monkeypatch
):
    use_settings(sync=False)
    started = threading.Event()

    def slow_collect(model, image, progress=None, **run):
        started.set()
        for i in range(500):
            if progress(i, 500) is False:
                raise GenerationCancelled("cancelled")
            time.sleep(0.01)
        return _fake_candidates(image.shape[:2])

    monkeypatch.setattr(auto_widget, "collect_candidates", slow_collect)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="cells")
    w = _widget(viewer)
    runner = w._runner
    w.run()
    assert started.wait(10)
    viewer.window.remove_dock_widget(w.native.parent())
    w.native.deleteLater()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert "SAM auto (cells)" not in viewer.layers
