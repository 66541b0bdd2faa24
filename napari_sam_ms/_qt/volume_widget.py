"""The "Volumes" dock widget: propagate one labelled object through a stack's slices.

Propagate (P) takes the chosen label id (default: the last committed object) on every slice
of the stack where it is, and follows it slice by slice in both directions
(:func:`napari_sam_ms.propagate.propagate_object`) in a worker with progress and Cancel. The
result is written into the labels layer with the same id as ONE undo step, keeping other
labels unless *Overwrite* is on. *Precompute slice embeddings* embeds every slice in the
background into the cache propagation reads (:class:`napari_sam_ms.volume_session.VolumeSession`).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import napari
import numpy as np
from magicgui.widgets import Container
from qtpy.QtCore import QTimer

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.propagate import Propagation, PropagationCancelled
from napari_sam_ms.volume_session import Precomputed, VolumeSession
from napari_sam_ms.volumes.label_objects import (
    label_slices,
    last_committed,
    plan_label_write,
    slice_ranges,
)

from .common import Notifier, guarded
from .image_target import TargetError
from .prompt_layers import BOXES_NAME, POINTS_NAME
from .volume_controls import AUTO_LABEL, PROPAGATE_KEY, VolumeControls
from .volume_target import VolumeTarget, resolve_volume, write_object
from .workers import Report, TaskRunner

PRECOMPUTE = "SAM: precomputing slice embeddings"
PROPAGATE = "SAM: propagating"
PROMPT_LAYERS = (POINTS_NAME, BOXES_NAME)  # P propagates with these selected too


class VolumeWidget(VolumeControls, Container):
    """Propagate objects through z-stacks and time-lapses; precompute slice embeddings.

    Args:
        viewer: the napari viewer.
        holder: the model holder (default: a new :class:`ModelHolder`; tests pass a fake).
        cache: the embedding cache (default: memory and the settings' disk folder).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        holder: ModelHolder | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self._viewer = viewer
        self._holder = holder if holder is not None else ModelHolder()
        self._session = VolumeSession(
            self._holder, cache if cache is not None else EmbeddingCache()
        )
        self._notify = Notifier()
        self._runner = TaskRunner(on_busy=self._on_busy)
        self._last_output: Any = None
        self._resume_precompute = False  # a propagation interrupted a precompute
        self._progress = (0, 0)  # (done, total) of the running job, set by the worker
        self._job_text = ""
        self._alive = True
        self._bound: dict[int, tuple[Any, Any]] = {}  # id -> (layer or viewer, old binding)
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        super().__init__(widgets=self._build_controls(), labels=True)
        self._default_axis()
        self._wire()

    @property
    def session(self) -> VolumeSession:
        return self._session

    def _wire(self) -> None:
        self._propagate_btn.changed.connect(self.propagate)
        self._cancel_btn.changed.connect(self.cancel)
        self._undo_btn.changed.connect(self.undo)
        self._precompute_btn.changed.connect(self.precompute)
        self._image.changed.connect(self._on_image_changed)
        self._axis.changed.connect(self._on_stack_changed)
        self._labels_choice.changed.connect(self._bind_labels_key)
        for emitter in self._viewer_events():
            emitter.connect(self._on_layers_changed)
        self._bind(self._viewer)
        self._bind_labels_key()
        self.native.destroyed.connect(lambda *_: self._teardown())

    def _viewer_events(self) -> list[Any]:
        events = self._viewer.layers.events
        return [events.inserted, events.removed, events.reordered]

    def _teardown(self) -> None:
        """The dock widget is gone: stop work and let go of the viewer and key bindings."""
        if not getattr(self, "_alive", False):
            return  # torn down already, or Python's state is gone (interpreter exit)
        self._alive = False
        with contextlib.suppress(RuntimeError):
            self._timer.stop()
        self._runner.shutdown()
        for emitter in self._viewer_events():
            emitter.disconnect(self._on_layers_changed)
        for target, old in list(self._bound.values()):
            target.bind_key(PROPAGATE_KEY, old, overwrite=True)  # None unbinds
        self._bound.clear()

    def report_failure(self, action: str, exc: BaseException) -> None:
        """One line for an error in an event handler (see :func:`common.guarded`)."""
        self._notify.error(f"SAM: {action} failed: {type(exc).__name__}: {exc}")
        self._status.value = f"Failed while {action} (see notification)"

    # ------------------------------------------------------------------ layers and keys
    @guarded("updating the layer lists")
    def _on_layers_changed(self, event: Any = None) -> None:
        if self._alive:
            self.reset_choices()
            self._bind_labels_key()

    def _default_axis(self) -> None:
        """The image's last stack axis (z of (t, z, y, x); t of a (t, y, x) time-lapse)."""
        self._axis.reset_choices()
        if self._axis.choices:
            self._axis.value = self._axis.choices[-1]

    @guarded("choosing the image")
    def _on_image_changed(self, *_: Any) -> None:
        self._default_axis()
        self._on_stack_changed()

    @guarded("choosing the stack")
    def _on_stack_changed(self, *_: Any) -> None:
        if self._auto_precompute.value and not self._runner.busy:
            self.precompute(quiet=True)

    def _bind(self, target: Any) -> None:
        """Bind P on ``target`` (the viewer or a layer), remembering what it replaced."""
        if id(target) not in self._bound:
            old = target.bind_key(PROPAGATE_KEY, lambda *_: self.propagate(), overwrite=True)
            self._bound[id(target)] = (target, old)

    @guarded("binding the P key")
    def _bind_labels_key(self, *_: Any) -> None:
        """P also works with the chosen labels layer or SAM's prompt layers selected
        (napari's own P there, paint / add / polygon mode, is still on keys 2 or 3...);
        layers no longer wanted get their binding back."""
        wanted = [self._labels_choice.value]
        wanted += [layer for layer in self._viewer.layers if layer.name in PROMPT_LAYERS]
        for key, (target, old) in list(self._bound.items()):
            if target is not self._viewer and not any(target is w for w in wanted):
                target.bind_key(PROPAGATE_KEY, old, overwrite=True)
                del self._bound[key]
        for layer in wanted:
            if layer is not None:
                self._bind(layer)

    # ------------------------------------------------------------------ propagation
    def _target(self, need_labels: bool = True) -> VolumeTarget:
        return resolve_volume(
            self._image.value,
            self._labels_choice.value if need_labels else None,
            self._axis.value,
            self._viewer.dims.point,
            need_labels,
        )

    def _object_label(self, target: VolumeTarget, labels: np.ndarray) -> int:
        """The chosen id, or the last committed object, else the layer's selected label."""
        name, where = target.labels.name, target.where()
        chosen = int(self._object_id.value)
        if chosen != AUTO_LABEL:
            if not np.any(labels == chosen):
                raise TargetError(
                    f"No object to propagate: label {chosen} is not in '{name}' ({where}). "
                    "Commit it on a slice first, or set 'Object' to a label that is there."
                )
            return chosen
        found = last_committed(
            target.labels.metadata.get("sam_prompts"), lambda i: np.any(labels == i)
        )
        selected = int(getattr(target.labels, "selected_label", 0) or 0)
        if found is None and selected and np.any(labels == selected):
            found = selected
        if found is None:
            raise TargetError(
                f"No object to propagate in '{name}' ({where}): commit one with 'Segment with "
                "prompts' on a slice, or set 'Object' to the label id to propagate."
            )
        return found

    @guarded("starting the propagation")
    def propagate(self) -> None:
        """Propagate the chosen object through the stack (key P)."""
        try:
            target = self._target()
            labels = target.label_stack
            label = self._object_label(target, labels)
        except TargetError as exc:
            self._notify.error(str(exc))
            self._status.value = str(exc)
            return
        on = label_slices(labels, label)
        if len(on) == len(labels):
            self._status.value = (
                f"Label {label} is on every slice ({target.where()}, 0-{len(labels) - 1}) "
                "already: nothing to propagate."
            )
            self._notify.info(f"SAM: {self._status.value}")
            return
        if self._runner.current_desc == PRECOMPUTE:
            self._resume_precompute = True  # superseded below; resumed when this ends
        box: dict[str, Propagation] = {}
        options = {"prompt": str(self._prompt.value), "iou_stop": float(self._iou_stop.value)}
        self._job_text = f"Propagating label {label} from slices {slice_ranges(on)}"
        self._runner.submit(
            partial(self._propagate_job, target, labels == label, options, box),
            on_done=partial(self._on_propagated, target, label),
            on_error=self._on_job_error,
            on_cancel=partial(self._on_propagation_cancelled, target, label, box),
            desc=PROPAGATE,
        )

    def _propagate_job(
        self,
        target: VolumeTarget,
        annotated: np.ndarray,
        options: dict[str, Any],
        box: dict[str, Propagation],
        report: Report,
    ) -> Propagation:
        """Worker: the propagation; a cancel leaves the slices done in ``box``."""
        try:
            return self._session.propagate(
                target.stack, target.limits, annotated, self._reporting(report), **options
            )
        except PropagationCancelled as exc:
            box["result"] = exc.result
            raise

    @guarded("writing the propagation")
    def _on_propagated(self, target: VolumeTarget, label: int, result: Propagation) -> None:
        self._write(target, label, result)
        self._after_job()

    @guarded("cancelling the propagation")
    def _on_propagation_cancelled(
        self, target: VolumeTarget, label: int, box: dict[str, Propagation]
    ) -> None:
        result = box.get("result")
        if self._keep_partial.value and result is not None and result.slices:
            self._write(target, label, result, cancelled=True)
        else:
            self._status.value = "Cancelled: nothing written."
        self._after_job()

    def _write(
        self, target: VolumeTarget, label: int, result: Propagation, cancelled: bool = False
    ) -> None:
        """Write the object's new voxels into the labels layer as one undo step."""
        layer = target.labels
        if layer not in self._viewer.layers:
            self._notify.error(
                f"SAM: the labels layer '{layer.name}' was removed; nothing written."
            )
            self._status.value = "Nothing written (labels layer removed)"
            return
        existing = target.label_stack  # now: the user may have edited meanwhile
        plan = plan_label_write(existing, result.mask, label, bool(self._overwrite.value))
        write_object(target, plan.where, label)
        self._last_output = layer
        head = "Cancelled; kept: " if cancelled else ""
        if plan.new_slices:
            n, where = len(plan.new_slices), slice_ranges(plan.new_slices)
            text = f"{head}label {label} on {n} new slice(s) ({where}, {target.where()})"
        else:
            text = f"{head}label {label}: no new slice"
        how = " (through tiles at full resolution)" if result.tiled else ""
        self._status.value = f"{text[0].upper()}{text[1:]}{how}. {describe_stops(result)}".strip()
        if result.notes:  # an object larger than a tile: answered coarser on some slices
            self._notify.info(f"SAM: {result.notes[0]} ({len(result.notes)} slice(s))")
        if plan.kept:
            self._notify.warning(
                f"SAM: {plan.kept} pixel(s) of label {label} lay on other labels and were not "
                "written (tick 'Overwrite existing labels' to replace them)."
            )

    # ------------------------------------------------------------------ embeddings
    @guarded("starting the precompute")
    def precompute(self, quiet: bool = False) -> None:
        """Embed every slice of the chosen stack in the background (cached slices skipped)."""
        try:
            target = self._target(need_labels=False)
        except TargetError as exc:
            if not quiet:
                self._notify.error(str(exc))
                self._status.value = str(exc)
            return
        self._resume_precompute = False
        self._job_text = f"Embedding slices ({target.where()})"
        self._runner.submit(
            partial(self._precompute_job, target),
            on_done=self._on_precomputed,
            on_error=self._on_job_error,
            on_cancel=self._on_precompute_cancelled,
            desc=PRECOMPUTE,
        )

    def _precompute_job(self, target: VolumeTarget, report: Report) -> Precomputed:
        return self._session.precompute(target.stack, target.limits, self._reporting(report))

    def _on_precomputed(self, done: Precomputed) -> None:
        if done.tiled:
            self._status.value = (
                f"Tile embeddings ready: {done.total} slices x {done.tiles} tiles at full "
                f"resolution ({done.computed} computed, {done.reused} cached)."
            )
            return
        self._status.value = (
            f"Slice embeddings ready: {done.total} slices ({done.computed} computed, "
            f"{done.reused} cached)."
        )

    def _on_precompute_cancelled(self) -> None:
        done, total = self._progress
        self._status.value = f"Precompute cancelled after {done} of {total} slices (kept cached)."

    # ------------------------------------------------------------------ jobs
    def _reporting(self, report: Report) -> Report:
        """``report`` that also records (done, total) for the status line."""

        def wrapped(done: int, total: int) -> bool:
            self._progress = (int(done), int(total))
            return report(done, total)

        return wrapped

    def _after_job(self) -> None:
        if self._resume_precompute and self._alive:
            self._resume_precompute = False
            self.precompute(quiet=True)

    def _on_job_error(self, exc: BaseException) -> None:
        if isinstance(exc, ValueError):  # bad input found by the backend: its message
            self._notify.error(f"SAM: {exc}")
            self._status.value = str(exc)
        else:
            self._notify.job_error(exc)
            self._status.value = "Failed (see notification)"
        self._after_job()

    def _on_busy(self, busy: bool) -> None:
        if not self._alive:
            return
        self._cancel_btn.enabled = busy
        if busy:
            self._progress = (0, 0)
            self._status.value = self._job_text or "Working..."
            self._timer.start()
        else:
            self._timer.stop()

    def _show_progress(self) -> None:
        done, total = self._progress
        if self._alive and self._runner.busy and total:
            self._status.value = f"{self._job_text}: {done} of {total} slices"

    @guarded("cancelling")
    def cancel(self) -> None:
        """Stop the running propagation or precompute (after the current slice)."""
        self._resume_precompute = False
        self._runner.cancel()

    @guarded("undoing")
    def undo(self) -> None:
        """Undo the last edit of the labels layer last written (same as Ctrl+Z on it)."""
        if self._last_output is not None:
            self._last_output.undo()


def describe_stops(result: Propagation) -> str:
    """Why each direction stopped, in words."""
    words = []
    for name, why in result.stops.items():
        if why == "met":
            continue
        kind, _, z = why.partition(" ")
        text = {
            "end": "stack's end",
            "iou": f"stopped at {z} (IoU below the stop)",
            "vanished": f"stopped at {z} (object vanished)",
        }.get(kind, why)
        words.append(f"{name.capitalize()}: {text}")
    return "; ".join(words) + ("." if words else "")


__all__ = ["VolumeWidget", "describe_stops"]
