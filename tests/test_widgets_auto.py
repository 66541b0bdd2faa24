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
    """Both filters above every candidate: the hint gives the values of the best one."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 80), np.uint8), name="cells")
    w = _widget(viewer)
    w["stability_score_thresh"].value = 1.0
    w["pred_iou_thresh"].value = 0.99
    w.run()
    hint = (
        "0 objects from 3 candidates: lower 'pred iou thresh' from 0.99 to 0.94 and "
        "'stability score thresh' from 1.00 to 0.99 (the best candidate: predicted IoU 0.95, "
        "stability score 0.99)."
    )
    assert ("warning", f"SAM: {hint}") in messages
    assert w._status.value == hint
    w["pred_iou_thresh"].value, w["stability_score_thresh"].value = 0.94, 0.99
    w.refilter()
    assert viewer.layers["SAM auto (cells)"].data.max() == 1


def test_hint_uses_the_current_threshold_and_the_best_score(
    make_napari_viewer, monkeypatch, messages
):
    """The issue's case: 'pred iou thresh' already 0.30 and the best candidate at 0.22; the
    old hint said to lower it 'e.g. to 0.65'."""

    def collect(model, image, progress=None, **run):
        cands = _fake_candidates(image.shape[:2])
        cands.crops[0]["iou_preds"] = np.array([0.22, 0.15, 0.10], np.float32)
        return cands

    monkeypatch.setattr(auto_widget, "collect_candidates", collect)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 60, 80), np.uint8), name="stack")
    viewer.dims.set_current_step(0, 2)
    w = _widget(viewer)
    w["pred_iou_thresh"].value = 0.30
    w.run()
    hint = (
        "0 objects from 3 candidates: lower 'pred iou thresh' from 0.30 to 0.21 "
        "(best predicted IoU 0.22)."
    )
    assert w._status.value == f"Slice (2,): {hint}"
    assert messages[-1] == ("warning", f"SAM: {hint}") and "0.65" not in messages[-1][1]


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


def _blobs(dark: bool) -> np.ndarray:
    """The fake candidates' three disks, bright on dark (fluorescence) or dark on bright."""
    image = np.full((60, 80), 30, np.uint8)
    for centre, radius in [((20, 20), 12), ((20, 60), 8), ((45, 40), 4)]:
        image[disk((60, 80), centre, radius)] = 220
    return 255 - image if dark else image


def test_invert_is_suggested_and_changes_only_the_model_input(make_napari_viewer, monkeypatch):
    from napari_sam_ms._qt.image_target import resolve_target

    seen = []

    def collect(model, image, progress=None, **run):
        seen.append((image.copy(), run["invert"]))
        cands = _fake_candidates(image.shape[:2])
        cands.run_settings = dict(run)  # as collect_candidates records them
        return cands

    monkeypatch.setattr(auto_widget, "collect_candidates", collect)
    viewer = make_napari_viewer()
    fluo = viewer.add_image(_blobs(dark=False), name="fluo")
    w = _widget(viewer)
    assert w["invert"].value is False and w._status.value == "Ready"
    dark_data = _blobs(dark=True)
    dark = viewer.add_image(dark_data.copy(), name="brightfield")
    assert w._image.value is dark and w["invert"].value is True  # suggested
    assert w._status.value.startswith("'brightfield' looks dark on bright: 'invert' is ticked")
    w.run()
    image, invert = seen[-1]
    assert invert is True  # the generator inverts what the model sees ...
    np.testing.assert_array_equal(image, resolve_target(dark, viewer.dims.point).rgb)
    np.testing.assert_array_equal(dark.data, dark_data)  # ... the layer is unchanged
    assert w._status.value == "2 objects from 3 candidates (inverted input)"
    w.reset_defaults()
    assert w["invert"].value is True  # Defaults keep the image's suggestion
    w._image.value = fluo
    assert w["invert"].value is False and w._status.value == "Ready"


def test_invert_reaches_the_model_not_the_layer(make_napari_viewer, monkeypatch):
    from napari_sam_ms._qt.image_target import resolve_target
    from napari_sam_ms.predictor import SamPredictor

    seen = []
    set_image = SamPredictor.set_image

    def spy(self, image, *args, **kwargs):
        seen.append(np.array(image))
        return set_image(self, image, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "set_image", spy)
    viewer = make_napari_viewer()
    dark_data = _blobs(dark=True)
    layer = viewer.add_image(dark_data.copy(), name="brightfield")
    w = _widget(viewer, model="tiny", fake=False)
    assert w["invert"].value is True
    w["points_per_side"].value = 2
    w["pred_iou_thresh"].value = w["stability_score_thresh"].value = 0.0
    w.run()
    rgb = resolve_target(layer, viewer.dims.point).rgb
    np.testing.assert_array_equal(seen[-1], 255 - rgb)
    np.testing.assert_array_equal(layer.data, dark_data)
    w["invert"].value = False
    w.run()
    np.testing.assert_array_equal(seen[-1], rgb)


def test_follows_a_new_or_selected_image_and_clears_stale_status(make_napari_viewer, fake_collect):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((8, 60, 80), np.uint8), name="stack")
    w = _widget(viewer)
    viewer.dims.set_current_step(0, 6)
    w.run()
    assert w._status.value == "2 objects from 3 candidates (slice (6,))"
    new = viewer.add_image(np.zeros((60, 80), np.uint8), name="new")  # File > Open
    assert w._image.value is new
    assert w._status.value == "Ready" and w.labels_layer is not None
    w["pred_iou_thresh"].value = 0.5  # nothing stale is re-filtered
    w.refilter()
    assert w._status.value == "Ready"
    viewer.layers.selection.active = stack  # selected in the layer list
    assert w._image.value is stack and w._status.value == "Ready"
    other = viewer.add_image(np.zeros((60, 80), np.uint8), name="other")
    viewer.layers.selection.active = new
    w._image.value = other  # chosen here while another image is selected in the list
    w.run()  # adding 'SAM auto (other)' re-selects 'new': not the user's choice
    assert w._image.value is other and "SAM auto (other)" in viewer.layers
    assert w._status.value == "3 objects from 3 candidates"  # pred iou thresh 0.5
    w["pred_iou_thresh"].value = 0.85  # the sliders still re-filter this run
    w.refilter()
    assert w._status.value == "2 objects from 3 candidates"
