"""The "Volumes" widget: propagate a committed object through a stack (run under Xvfb).

A content-aware fake predictor stands in for SAM: its "embedding" is the slice itself, and a
prompt's mask is the bright (> 127) connected region under the prompt's first foreground
point (or box centre). Propagation through a synthetic stack then follows a bright blob
slice by slice and stops where it vanishes, so the tests check real propagation, writing,
undo and cancel without a model.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.key_bindings import KeyBinding
from scipy import ndimage

from napari_sam_ms._qt.prompt_widget import PromptWidget
from napari_sam_ms._qt.volume_widget import VolumeWidget
from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import LoadedModel
from napari_sam_ms.predictor import ImageEmbedding
from napari_sam_ms.volumes.label_objects import (
    label_slices,
    last_committed,
    plan_label_write,
    slice_ranges,
)

pytestmark = pytest.mark.gui
N, H, W = 9, 40, 48
BLOB = range(2, 7)  # slices holding the blob


class SlicePredictor:
    """The bright component under the prompt, read from the slice it was given."""

    embedding_suffix = ""

    def __init__(self) -> None:
        self.model = None
        self.set_image_calls = 0
        self.set_embedding_calls = 0
        self.predict_calls = 0
        self.on_predict = None  # called before each prediction (tests cancel from it)
        self.is_image_set = False
        self._gray = np.zeros((1, 1), np.float32)

    def set_image(self, image: np.ndarray) -> None:
        self.set_image_calls += 1
        self._gray = np.asarray(image)[..., 0].astype(np.float32)
        self.is_image_set = True

    @property
    def embedding(self) -> ImageEmbedding:
        shape = self._gray.shape
        return ImageEmbedding(self._gray[None, None].copy(), shape, shape)

    def set_embedding(self, emb: ImageEmbedding) -> None:
        self.set_embedding_calls += 1
        self._gray = np.asarray(emb.features)[0, 0]
        self.is_image_set = True

    def predict(
        self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True
    ):
        self.predict_calls += 1
        if self.on_predict is not None:
            self.on_predict(self.predict_calls)
        if point_coords is not None and np.any(np.asarray(point_labels) == 1):
            x, y = np.asarray(point_coords)[np.argmax(np.asarray(point_labels) == 1)]
        else:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        regions, _ = ndimage.label(self._gray > 127)
        at = regions[int(round(y)), int(round(x))]
        mask = (regions == at) if at else np.zeros(self._gray.shape, bool)
        n = 3 if multimask_output else 1
        return np.stack([mask] * n), np.full(n, 0.9, np.float32), np.zeros((n, 4, 4), np.float32)


def _holder(fake: SlicePredictor, persistent: bool = False) -> ModelHolder:
    def load(model_type, checkpoint):
        return LoadedModel(object(), model_type, None, "fake:slices", random_weights=not persistent)

    def factory(loaded):
        fake.model = loaded.model
        return fake

    return ModelHolder("tiny", loader=load, predictor_factory=factory, background_warm_up=False)


def blob_stack() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 stack, the blob's true mask): a disk drifting right on slices 2..6."""
    yy, xx = np.mgrid[:H, :W]
    truth = np.zeros((N, H, W), bool)
    for z in BLOB:
        truth[z] = (yy - 20) ** 2 + (xx - 16 - 2 * z) ** 2 <= 64
    image = np.where(truth, 200, 20).astype(np.uint8)
    image[:, 2:6, 40:46] = 220  # an unrelated bright patch on every slice
    return image, truth


@pytest.fixture(autouse=True)
def _sync(use_settings):
    use_settings(sync=True)


@pytest.fixture
def fake() -> SlicePredictor:
    return SlicePredictor()


@pytest.fixture
def scene(make_napari_viewer, fake):
    """A viewer with the blob stack, labels holding label 3 on slice 4 (a committed object)
    and another object 7 on part of slice 5, and the widget docked."""
    viewer = make_napari_viewer()
    image, truth = blob_stack()
    viewer.add_image(image, name="stack")
    labels = np.zeros((N, H, W), np.int32)
    labels[4][truth[4]] = 3
    labels[5, 10:30, 28:40] = 7
    layer = viewer.add_labels(labels, name="SAM labels")
    layer.metadata["sam_prompts"] = {3: {"slice": [4]}}
    w = VolumeWidget(viewer, holder=_holder(fake), cache=EmbeddingCache(cache_dir=False))
    viewer.window.add_dock_widget(w, name="Volumes")
    w._image.value = viewer.layers["stack"]
    w._labels_choice.value = layer
    return viewer, w, layer, truth


def test_propagate_writes_the_object_keeps_other_labels_and_one_undo(scene, fake):
    viewer, w, layer, truth = scene
    before = layer.data.copy()
    w.propagate()
    out = layer.data
    assert set(np.flatnonzero((out == 3).any(axis=(1, 2)))) == set(BLOB)
    other = before == 7
    np.testing.assert_array_equal(out == 3, truth & ~other)  # follows the blob exactly
    np.testing.assert_array_equal(out[other], 7)  # Overwrite off: object 7 kept
    assert "4 new slice(s) (2-3, 5-6" in w._status.value
    assert "vanished" in w._status.value
    layer.undo()  # ONE undo step reverts the whole propagation
    np.testing.assert_array_equal(layer.data, before)


def test_overwrite_takes_other_labels_and_undo_button(scene):
    viewer, w, layer, truth = scene
    before = layer.data.copy()
    w._overwrite.value = True
    w.propagate()
    np.testing.assert_array_equal(layer.data == 3, truth)
    w.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_p_key_on_viewer_and_labels_layer_propagates(scene):
    viewer, w, layer, truth = scene
    before = layer.data.copy()
    viewer.keymap[KeyBinding.from_str("P")](viewer)
    assert (layer.data == 3).any(axis=(1, 2)).sum() == len(BLOB)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    layer.keymap[KeyBinding.from_str("P")](layer)
    assert (layer.data == 3).any(axis=(1, 2)).sum() == len(BLOB)
    layer.undo()
    # SAM's prompt layers (napari's own P there: add mode) propagate too, once they exist
    points = viewer.add_points(np.empty((0, 3)), name="SAM points")
    points.keymap[KeyBinding.from_str("P")](points)
    assert (layer.data == 3).any(axis=(1, 2)).sum() == len(BLOB)
    other = viewer.add_points(np.empty((0, 3)), name="my points")
    assert KeyBinding.from_str("P") not in other.keymap  # a user's own layer keeps napari's
    w._teardown()  # what closing the dock does
    assert KeyBinding.from_str("P") not in points.keymap  # given back when the widget goes
    w.native.close()
    w.native.deleteLater()


@pytest.mark.parametrize("keep", [False, True])
def test_cancel_keeps_or_discards_the_slices_done(scene, fake, keep):
    viewer, w, layer, truth = scene
    before = layer.data.copy()
    w._keep_partial.value = keep
    fake.on_predict = lambda calls: w.cancel() if calls == 2 else None
    w.propagate()
    assert fake.predict_calls == 2  # stopped after the slice in progress
    assert w._status.value.startswith("Cancelled")
    if not keep:
        np.testing.assert_array_equal(layer.data, before)
        return
    done = set(np.flatnonzero((layer.data == 3).any(axis=(1, 2))))
    assert 4 in done and 1 < len(done) < len(BLOB)
    for z in done:
        np.testing.assert_array_equal(layer.data[z] == 3, truth[z] & (before[z] != 7))
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


@pytest.mark.parametrize("shared", ["one cache", "one disk folder"])
def test_precompute_fills_the_cache_propagation_and_prompt_clicks_reuse(
    make_napari_viewer, fake, tmp_path, shared
):
    """Precomputed slices serve propagation and the Prompt widget's clicks: through one
    cache object, or (real weights) through the disk folder two widgets' caches share."""
    viewer = make_napari_viewer()
    image, truth = blob_stack()
    viewer.add_image(image, name="stack")
    labels = viewer.add_labels(np.zeros((N, H, W), np.int32), name="SAM labels")
    if shared == "one cache":
        cache = prompt_cache = EmbeddingCache(cache_dir=False)
        holder = _holder(fake)
    else:
        cache, prompt_cache = (EmbeddingCache(cache_dir=tmp_path) for _ in range(2))
        holder = _holder(fake, persistent=True)
    w = VolumeWidget(viewer, holder=holder, cache=cache)
    viewer.window.add_dock_widget(w, name="Volumes")
    w._image.value, w._labels_choice.value = viewer.layers["stack"], labels
    w.precompute()
    assert fake.set_image_calls == N and w._status.value.startswith(f"Slice embeddings ready: {N}")
    w.precompute()  # all cached: nothing recomputed
    assert fake.set_image_calls == N and f"0 computed, {N} cached" in w._status.value
    # a click in the Prompt widget on slice 4 (same model, same cache): no new embedding
    prompt = PromptWidget(viewer, holder=holder, cache=prompt_cache)
    viewer.window.add_dock_widget(prompt, name="Segment with prompts")
    prompt._image.value, prompt._output.value = viewer.layers["stack"], labels
    viewer.dims.set_current_step(0, 4)
    prompt.points_layer.add([4, 20, 24])
    prompt.update_preview()
    prompt.commit()
    assert fake.set_image_calls == N
    np.testing.assert_array_equal(labels.data[4] > 0, truth[4])
    w.propagate()  # the committed object, from the Prompt widget's log
    assert fake.set_image_calls == N
    np.testing.assert_array_equal(labels.data > 0, truth)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no image", "No image layer"),
        ("2d", "2D image"),
        ("shape", "has shape (5, 40, 48) but the image"),
        ("no labels", "No labels layer"),
        ("no object", "label 5 is not in"),
        ("nothing committed", "No object to propagate"),
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(
    make_napari_viewer, fake, messages, case, expected
):
    viewer = make_napari_viewer()
    image, truth = blob_stack()
    if case == "2d":
        viewer.add_image(image[4], name="stack")
    elif case != "no image":
        viewer.add_image(image, name="stack")
    shape = (5, H, W) if case == "shape" else (N, H, W)
    labels = None
    if case != "no labels":
        labels = viewer.add_labels(np.zeros(shape, np.int32), name="SAM labels")
        if case == "no object":
            labels.data[4][truth[4]] = 3
    w = VolumeWidget(viewer, holder=_holder(fake), cache=EmbeddingCache(cache_dir=False))
    viewer.window.add_dock_widget(w, name="Volumes")
    if case == "no object":
        w._object_id.value = 5
    if case == "nothing committed":
        labels.selected_label = 9  # not in the layer either
    before = None if labels is None else labels.data.copy()
    w.propagate()
    errors = [text for kind, text in messages if kind == "error"]
    assert len(errors) == 1 and expected in errors[0], messages
    assert expected in w._status.value
    assert fake.predict_calls == 0
    if labels is not None:
        np.testing.assert_array_equal(labels.data, before)


def test_object_on_every_slice_says_so(scene, fake, messages):
    viewer, w, layer, truth = scene
    layer.data[:, 0:3, 0:3] = 3  # now on every slice
    w.propagate()
    assert "on every slice" in w._status.value and fake.predict_calls == 0
    assert [k for k, _ in messages] == ["info"]


def test_object_on_the_last_slice_propagates_down_and_stops(make_napari_viewer, fake):
    """An object only on the last slice goes down to where it vanishes."""
    viewer = make_napari_viewer()
    image, truth = blob_stack()
    image, truth = image[:5], truth[:5]  # the blob is on slices 2..4: the last is 4
    viewer.add_image(image, name="stack")
    labels = np.zeros(image.shape, np.int32)
    labels[4][truth[4]] = 2
    layer = viewer.add_labels(labels, name="SAM labels")
    w = VolumeWidget(viewer, holder=_holder(fake), cache=EmbeddingCache(cache_dir=False))
    w._image.value, w._labels_choice.value, w._object_id.value = viewer.layers["stack"], layer, 2
    w.propagate()
    np.testing.assert_array_equal(layer.data == 2, truth)
    assert "Above: stack's end" in w._status.value


def test_time_lapse_axis_is_chosen_and_other_axis_stays(make_napari_viewer, fake):
    """(t, z, y, x): propagate along t at the shown z; other z planes are untouched."""
    viewer = make_napari_viewer()
    image, truth = blob_stack()  # as (t, y, x): the blob drifts over time
    image4 = np.stack([image] * 3, axis=1)  # (t, z=3, y, x)
    viewer.add_image(image4, name="movie")
    labels = np.zeros(image4.shape, np.int32)
    labels[4, 1][truth[4]] = 6
    layer = viewer.add_labels(labels, name="SAM labels")
    w = VolumeWidget(viewer, holder=_holder(fake), cache=EmbeddingCache(cache_dir=False))
    w._image.value, w._labels_choice.value, w._object_id.value = viewer.layers["movie"], layer, 6
    assert list(w._axis.choices) == [0, 1] and w._axis.value == 1  # z by default
    w._axis.value = 0
    viewer.dims.set_current_step(1, 1)
    w.propagate()
    np.testing.assert_array_equal(layer.data[:, 1] == 6, truth)
    assert not layer.data[:, [0, 2]].any()


def test_precompute_runs_in_a_worker_and_can_be_cancelled(use_settings, scene, fake, qtbot):
    use_settings(sync=False)
    viewer, w, layer, truth = scene
    fake.set_image = _slow(fake.set_image)
    w.precompute()
    assert w._runner.busy  # returned at once: the UI thread is free
    qtbot.waitUntil(lambda: fake.set_image_calls >= 2, timeout=5000)
    w.cancel()
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=5000)
    assert "Precompute cancelled" in w._status.value
    done = fake.set_image_calls
    assert 2 <= done < N
    w.precompute()  # resumes: only the missing slices
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=10000)
    assert fake.set_image_calls == N
    assert f"{N - done} computed, {done} cached" in w._status.value


def _slow(method):
    import time

    def run(*args, **kwargs):
        time.sleep(0.1)
        return method(*args, **kwargs)

    return run


def test_auto_precompute_starts_when_a_stack_is_chosen(make_napari_viewer, fake):
    viewer = make_napari_viewer()
    image, _ = blob_stack()
    viewer.add_image(image[:, :, :24], name="other")
    viewer.add_image(image, name="stack")
    w = VolumeWidget(viewer, holder=_holder(fake), cache=EmbeddingCache(cache_dir=False))
    assert w._auto_precompute.value  # on by default
    w._image.value = viewer.layers["other"]
    w._image.value = viewer.layers["stack"]
    assert fake.set_image_calls == N and "Slice embeddings ready" in w._status.value
    w._auto_precompute.value = False  # off: choosing a stack embeds nothing
    w._image.value = viewer.layers["other"]
    w._image.value = viewer.layers["stack"]
    w._axis.value = w._axis.choices[0]
    assert fake.set_image_calls == N


# ---------------------------------------------------------------- the numpy helpers


def test_plan_label_write_keeps_other_labels_unless_overwrite():
    existing = np.zeros((3, 4, 4), np.int32)
    existing[1, 0, :] = 5  # another object
    existing[0, 2, 2] = 3  # the object itself
    mask = np.zeros_like(existing, bool)
    mask[:, :2, :] = True
    mask[0, 2, 2] = True
    plan = plan_label_write(existing, mask, 3, overwrite=False)
    assert plan.kept == 4 and plan.new_slices == (1, 2)
    assert not plan.where[1, 0].any() and plan.where[1, 1].all() and not plan.where[0, 2, 2]
    over = plan_label_write(existing, mask, 3, overwrite=True)
    assert over.kept == 0 and over.where[1, 0].all() and over.new_slices == (1, 2)
    assert over.where.sum() == mask.sum() - 1  # the label's own voxel is not rewritten


def test_last_committed_and_slice_ranges():
    log = {2: {}, 9: {}, 4: {}}
    assert last_committed(log, lambda i: i in {2, 9}) == 9
    assert last_committed(log, lambda i: False) is None
    assert last_committed(None, lambda i: True) is None
    assert slice_ranges((0, 1, 2, 5, 7, 8)) == "0-2, 5, 7-8"
    labels = np.zeros((4, 2, 2), np.int32)
    labels[[1, 3], 0, 0] = 6
    assert label_slices(labels, 6) == (1, 3) and label_slices(labels, 1) == ()
