"""The Automatic widget's *Segment volume* (under Xvfb): wiring, result layer, errors.

The 3D linking itself is tested in test_match3d.py and test_volume_segment.py (with the
embedded model); here ``segment_volume`` is replaced by a recorder that thresholds the stack.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sam_ms._qt import auto_volume
from napari_sam_ms._qt.auto_widget import AutoWidget
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import LoadedModel
from napari_sam_ms.segment_volume import VolumeSegmentation

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _sync(use_settings):
    use_settings(sync=True)


@pytest.fixture
def calls(monkeypatch):
    """Replace segment_volume: objects are the stack's bright connected parts."""
    made = []

    def fake(stack, model, scale=None, contrast_limits=None, progress=None, cache=None, **amg):
        made.append(dict(stack=stack, model=model, scale=scale, limits=contrast_limits, amg=amg))
        for z in range(stack.shape[0]):
            progress(z + 1, stack.shape[0])
        labels, n = ndimage.label(stack > 100)
        per_slice = np.zeros_like(labels)
        return VolumeSegmentation(
            labels.astype(np.uint32), n, per_slice, (1,) * len(stack), (0.0,) * len(stack),
            (), 2, amg,
        )  # fmt: skip

    monkeypatch.setattr(auto_volume, "segment_volume", fake)
    return made


def _widget(viewer) -> AutoWidget:
    def load(model_type, checkpoint):
        return LoadedModel(object(), model_type, None, f"fake:{model_type}")

    holder = ModelHolder("vit_b", loader=load, predictor_factory=lambda loaded: None)
    w = AutoWidget(viewer, holder=holder)
    viewer.window.add_dock_widget(w, name="Automatic segmentation")
    return w


def _stack() -> np.ndarray:
    stack = np.zeros((6, 40, 48), np.uint16)
    stack[1:5, 5:15, 5:15] = 3000  # one box-shaped object
    stack[2:6, 20:30, 25:40] = 2000  # another
    return stack


def test_segment_volume_adds_a_3d_layer_with_the_image_scale(make_napari_viewer, calls):
    viewer = make_napari_viewer()
    image = viewer.add_image(_stack(), name="cells", scale=(2.0, 0.5, 0.5), translate=(0, 3, 4))
    before = viewer.layers["cells"].data.copy()
    w = _widget(viewer)
    w._run_controls["points_per_side"].value = 12
    w.segment_volume()
    (call,) = calls
    assert call["stack"].shape == (6, 40, 48) and call["scale"] == (2.0, 0.5, 0.5)
    assert call["limits"] == tuple(float(v) for v in image.contrast_limits)
    assert call["amg"]["points_per_side"] == 12  # the widget's settings reach the run
    assert "pred_iou_thresh" in call["amg"]  # and its filters
    assert "tile_shape" not in call["amg"]  # auto: 40x48 slices fit the model's input
    layer = viewer.layers["SAM volume (cells)"]
    assert layer.data.shape == (6, 40, 48) and int(layer.data.max()) == 2
    np.testing.assert_array_equal(layer.scale, (2.0, 0.5, 0.5))
    np.testing.assert_array_equal(layer.translate, (0, 3, 4))
    np.testing.assert_array_equal(viewer.layers["cells"].data, before)  # the image untouched
    assert "2 3D object(s)" in w._status.value and "2 dropped" in w._status.value


def test_slices_are_tiled_as_the_large_images_controls_say(make_napari_viewer, calls):
    viewer = make_napari_viewer()
    viewer.add_image(_stack(), name="cells")
    w = _widget(viewer)
    w._tiles.mode.value, w._tiles.tile.value, w._tiles.halo.value = "on", 32, 8
    w.segment_volume()
    (call,) = calls
    assert call["amg"]["tile_shape"] == (32, 32) and call["amg"]["halo"] == (8, 8)
    assert call["amg"]["zoom"] == 1 and call["amg"]["crop_n_layers"] == 0
    w._tiles.halo.value = 30  # a halo that leaves no tile: said, nothing runs
    w.segment_volume()
    assert len(calls) == 1 and "halo" in w._status.value


def test_a_4d_image_is_segmented_at_the_time_point_shown(make_napari_viewer, calls):
    viewer = make_napari_viewer()
    movie = np.stack([_stack(), np.zeros((6, 40, 48), np.uint16)])
    viewer.add_image(movie, name="movie")
    viewer.dims.set_current_step(0, 1)
    w = _widget(viewer)
    w.segment_volume()
    assert np.count_nonzero(calls[0]["stack"]) == 0  # time point 1 is empty
    assert "at time point 1" in w._status.value
    assert viewer.layers["SAM volume (movie)"].data.shape == (6, 40, 48)


def test_a_2d_image_gets_a_clear_message_and_nothing_runs(make_napari_viewer, calls):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 48), np.uint8), name="plane")
    w = _widget(viewer)
    n_layers = len(viewer.layers)
    w.segment_volume()
    assert not calls and len(viewer.layers) == n_layers
    assert w._status.value == auto_volume.NO_STACK
