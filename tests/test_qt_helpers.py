"""Small pieces of the widget package: model choice, image targets, labels edits, runner."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam_ms._qt.image_target import TargetError, check_layer, pick_level, resolve_target
from napari_sam_ms._qt.labels_edit import next_free_id, plan_objects
from napari_sam_ms._qt.model_choice import ModelChoice
from napari_sam_ms._qt.workers import TaskRunner
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import ModelLoadError
from napari_sam_ms.progress import Cancelled

pytestmark = pytest.mark.gui


def test_model_choice_round_trip(qtbot, tmp_path):
    holder = ModelHolder()
    choice = ModelChoice(holder)
    assert choice.checkpoint is None and holder.checkpoint is None
    choice.checkpoint = None  # setting "nothing" must not become the working directory
    assert choice.checkpoint is None
    ckpt = tmp_path / "w.pth"
    choice.checkpoint = ckpt
    choice.model_type = "vit_l"
    assert (holder.model_type, holder.checkpoint) == ("vit_l", str(ckpt))
    choice.checkpoint = ""
    assert holder.checkpoint is None


def test_missing_checkpoint_file_is_explained(tmp_path):
    holder = ModelHolder("vit_b", str(tmp_path / "nope.pth"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        holder.get()


def test_pick_level():
    shapes = [(8000, 6000), (4000, 3000), (2000, 1500), (1000, 750)]
    assert pick_level(shapes, 2048) == 2
    assert pick_level(shapes, 500) == 3
    assert pick_level([(100, 100)], 2048) == 0


def _layer(data, **kw):
    base = dict(
        name="img",
        data=data,
        ndim=data.ndim,
        dtype=data.dtype,
        multiscale=False,
        scale=np.ones(data.ndim),
        translate=np.zeros(data.ndim),
        contrast_limits=(0, 1),
        rotate=np.eye(data.ndim),
        shear=np.zeros(1),
        affine=None,
    )
    return SimpleNamespace(**{**base, **kw})


def test_check_layer_refuses_what_sam_cannot_read():
    with pytest.raises(TargetError, match="dtype complex"):
        check_layer(_layer(np.zeros((20, 20), complex)))
    with pytest.raises(TargetError, match="rotated"):
        check_layer(_layer(np.zeros((20, 20)), rotate=np.array([[0, 1], [-1, 0]])))
    with pytest.raises(TargetError, match="channels"):
        check_layer(_layer(np.zeros((20, 20, 2))))


def test_resolve_target_maps_float_through_contrast_limits():
    data = np.linspace(0, 10, 400).reshape(20, 20)
    target = resolve_target(_layer(data, contrast_limits=(0, 5)), [0, 0])
    assert target.rgb.dtype == np.uint8 and target.rgb.shape == (20, 20, 3)
    assert target.rgb[-1, -1, 0] == 255 and target.rgb[0, 0, 0] == 0
    with pytest.raises(TargetError, match="outside"):
        resolve_target(_layer(np.zeros((3, 20, 20))), [7, 0, 0])


def test_plan_objects_respects_existing_and_earlier_objects():
    existing = np.zeros((4, 4), int)
    existing[0] = 5
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.ones((4, 4), bool)
    plane, ids, empty = plan_objects(existing, [a, b, a], next_free_id(existing), False)
    assert ids == [6, 7] and empty == [2]
    assert (plane[0] == 0).all() and (plane[1] == 6).all() and (plane[2:] == 7).all()
    plane, ids, _ = plan_objects(existing, [a], 6, True)
    assert (plane[:2] == 6).all()


def test_runner_sync_newest_request_wins(use_settings, monkeypatch, qtbot):
    use_settings(sync=True)
    runner = TaskRunner()
    done = []

    def job_a(report):
        runner.submit(lambda r: "b", on_done=done.append)  # arrives while a runs
        return "a"

    runner.submit(job_a, on_done=done.append)
    assert done == ["b"] and not runner.busy  # a was superseded, b ran after it

    def failing(report):
        raise ValueError("boom")

    errors = []
    runner.submit(failing, on_error=errors.append)
    assert isinstance(errors[0], ValueError)


def test_runner_catches_cancellation_by_class(use_settings, qtbot):
    """A job raising Cancelled (or a subclass, e.g. the generator's) is cancelled, not failed."""
    use_settings(sync=True)
    runner = TaskRunner()

    class Stopped(Cancelled):
        pass

    def stopping(report):
        raise Stopped("stopped")

    seen = []
    runner.submit(stopping, on_error=seen.append, on_cancel=lambda: seen.append("cancelled"))
    assert seen == ["cancelled"]


def test_phase_status_shows_what_the_model_does_while_a_job_runs(qtbot):
    """The Prompt and Automatic widgets' status follows the holder's phase (compiling...)
    while their job runs, leaves other messages alone, and stops with the job."""
    from napari_sam_ms._qt.common import SLOW_PHASES, PhaseStatus

    holder = SimpleNamespace(phase="")
    status = SimpleNamespace(value="Segmenting...")
    runner = SimpleNamespace(busy=True)
    phase = PhaseStatus(holder, status, runner, SLOW_PHASES)
    phase.follow(True)
    holder.phase = "compiling"
    qtbot.waitUntil(lambda: status.value == "Compiling (first time only)...", timeout=2000)
    holder.phase = "embedding"  # not a slow phase: the status stays
    qtbot.wait(300)
    assert status.value == "Compiling (first time only)..."
    holder.phase = "loading"
    qtbot.waitUntil(lambda: status.value == "Loading model...", timeout=2000)
    status.value = "12 objects"  # the job's own message is never replaced
    holder.phase = "compiling"
    qtbot.wait(300)
    assert status.value == "12 objects"
    status.value, runner.busy = "Segmenting...", False  # the job ended: no more updates
    qtbot.wait(300)
    assert status.value == "Segmenting..."
