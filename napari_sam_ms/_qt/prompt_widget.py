"""The "Segment with prompts" dock widget: click points or draw boxes, see the mask, commit.

Prompts live in two layers the widget creates ("SAM points", "SAM boxes"). Every edit is
debounced, then the shown slice is embedded (cached) and each object predicted in a worker;
the result appears in "SAM preview". Commit writes the objects into the output Labels layer
with new ids as one undoable edit and clears the prompts.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, RadioButtons
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.interaction import ModelHolder, Prediction, PromptSession

from .common import (
    NO_IMAGE,
    Notifier,
    button_row,
    image_layer_choice,
    keep_active,
    labels_layers,
)
from .image_target import MAX_SIDE, ImageTarget, TargetError, resolve_target
from .labels_edit import commit_masks
from .model_choice import ModelChoice
from .prompt_layers import BG, FG, PromptLayers
from .workers import TaskRunner

DEBOUNCE_MS = 200
KEYS = {"toggle": "t", "next": "m", "commit": "c"}
_BUSY = ("Loading model...", "Segmenting...")


class PromptWidget(Container):
    """Segment objects from points and boxes, one round of prompts at a time.

    Args:
        viewer: the napari viewer.
        holder: the model holder (default: a new :class:`ModelHolder`; tests pass one with
            a fake loader).
        cache: the embedding cache (default: memory and the settings' disk folder).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        holder: ModelHolder | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self._viewer = viewer
        self.max_side = MAX_SIDE  # finest multiscale level whose plane fits this is used
        self._holder = holder if holder is not None else ModelHolder()
        self._session = PromptSession(
            self._holder, cache if cache is not None else EmbeddingCache()
        )
        self._notify = Notifier()
        self._runner = TaskRunner(on_busy=self._on_busy)
        self._prompts = PromptLayers(
            viewer,
            on_change=self._schedule,
            keys={KEYS["next"]: self.next_mask, KEYS["commit"]: self.commit},
            toggle_key=(KEYS["toggle"], self.toggle_label),
        )
        self._preview: Labels | None = None
        self._last_output: Labels | None = None
        self._prediction: Prediction | None = None
        self._generation = 0  # bumped whenever the prompts or the slice change
        self._submitted = -1  # generation of the newest request sent to the runner
        self._commit_requested = False
        self._alive = True
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_preview)
        super().__init__(widgets=self._build_controls(), labels=True)
        self._connect_viewer()
        self._on_image_changed()

    # ------------------------------------------------------------------ building
    def _build_controls(self) -> list:
        self._image = image_layer_choice(self._viewer)
        self._model = ModelChoice(self._holder)
        self._output = ComboBox(
            name="output_layer",
            label="Output",
            choices=self._output_choices,
            tooltip="Labels layer that receives committed objects. 'New layer' creates "
            "'SAM labels' on the first commit.",
        )
        self._point_label = RadioButtons(
            name="point_label",
            label="New points",
            choices=[("Foreground", FG), ("Background", BG)],
            value=FG,
            orientation="horizontal",
            tooltip="Label of the next points you click in 'SAM points': foreground (green) "
            "marks the object, background (red) excludes a region. Key T toggles.",
        )
        self._overwrite = CheckBox(
            name="overwrite",
            text="Overwrite existing labels",
            value=False,
            tooltip="Off (default): committed objects only fill unlabelled pixels, so nothing "
            "you segmented before is lost. On: new objects replace existing labels.",
        )
        self._candidate = Label(name="candidate", label="Mask", value="-")
        self._point_label.changed.connect(self._prompts.set_default_label)
        self._image.changed.connect(self._on_image_changed)
        return [
            self._image,
            self._model,
            self._output,
            self._point_label,
            self._overwrite,
            self._candidate,
            *self._action_controls(),
        ]

    def _action_controls(self) -> list:
        """Next mask, clear, commit, undo and cancel buttons, the status line and the help."""
        self._next = PushButton(
            name="next_mask_button",
            text="Next mask (M)",
            tooltip="SAM proposes 3 masks per object; the best-scored is shown first. Cycle "
            "through them (key M).",
        )
        self._commit_btn = PushButton(
            name="commit_button",
            text="Commit (C)",
            tooltip="Write the previewed object(s) into the output layer with new ids (key C). "
            "Undo with Ctrl+Z on the output layer or 'Undo commit'.",
        )
        self._clear_btn = PushButton(name="clear_button", text="Clear prompts")
        self._undo_btn = PushButton(name="undo_button", text="Undo commit")
        self._cancel_btn = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self._status = Label(name="status", label="Status", value="Ready")
        help_text = Label(
            name="help",
            value="Points: click in 'SAM points' (T: foreground/background).\n"
            "Boxes: draw rectangles in 'SAM boxes'; points inside refine them.\n"
            "M: next mask candidate.  C: commit.  Ctrl+Z on the output: undo.",
        )
        self._next.changed.connect(self.next_mask)
        self._commit_btn.changed.connect(self.commit)
        self._clear_btn.changed.connect(self.clear_prompts)
        self._undo_btn.changed.connect(self.undo_commit)
        self._cancel_btn.changed.connect(self.cancel)
        return [
            button_row("mask_buttons", self._next, self._clear_btn),
            button_row("commit_buttons", self._commit_btn, self._undo_btn, self._cancel_btn),
            self._status,
            Container(widgets=[help_text], labels=False),
        ]

    def _output_choices(self, _w: Any = None) -> list:
        exclude = (self._preview,) if self._preview is not None else ()
        layers = labels_layers(self._viewer, exclude=exclude)
        return [("New layer (SAM labels)", None)] + [(layer.name, layer) for layer in layers]

    def _connect_viewer(self) -> None:
        for name in ("inserted", "removed", "moved"):
            getattr(self._viewer.layers.events, name).connect(self._on_layers_changed)
        self._viewer.dims.events.current_step.connect(self._on_slice_changed)
        self.native.destroyed.connect(lambda *_: self._teardown())

    def _teardown(self) -> None:
        """The dock widget is gone: stop timers and work, let go of the viewer's events."""
        self._alive = False
        with contextlib.suppress(RuntimeError):  # Qt may have deleted it already
            self._timer.stop()
        self._runner.shutdown()
        for name in ("inserted", "removed", "moved"):
            getattr(self._viewer.layers.events, name).disconnect(self._on_layers_changed)
        self._viewer.dims.events.current_step.disconnect(self._on_slice_changed)
        self._prompts.disconnect()

    # ------------------------------------------------------------------ layers
    @property
    def points_layer(self):
        """The "SAM points" layer (None until an image is chosen)."""
        return self._prompts.points

    @property
    def boxes_layer(self):
        """The "SAM boxes" layer."""
        return self._prompts.boxes

    @property
    def preview_layer(self) -> Labels | None:
        return self._preview

    def _on_layers_changed(self, event: Any = None) -> None:
        self._prompts.forget_removed()
        for attr in ("_preview", "_last_output"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self._viewer.layers:
                setattr(self, attr, None)
        self.reset_choices()

    def _on_image_changed(self, *_: Any) -> None:
        image = self._image.value
        self._clear_preview()
        if image is not None:
            self._prompts.ensure(image)

    def _on_slice_changed(self, event: Any = None) -> None:
        if self._prediction is not None or self._prompts.has_prompts():
            self._clear_preview()
            self._schedule()

    def toggle_label(self) -> None:
        """Switch new points between foreground and background."""
        self._point_label.value = BG if self._point_label.value == FG else FG

    def _schedule(self, event: Any = None) -> None:
        self._generation += 1
        if self._alive:
            self._timer.start()

    # ------------------------------------------------------------------ predicting
    def update_preview(self) -> None:
        """Predict the current prompts now (the debounce timer calls this)."""
        self._timer.stop()
        if not self._alive:
            return
        try:
            image = self._image.value
            if image is None:
                raise TargetError(NO_IMAGE)
            target = resolve_target(image, self._viewer.dims.point, self.max_side)
            objects, notes = self._prompts.collect(target)
        except TargetError as exc:
            self._notify.error(str(exc))
            self._commit_requested = False
            self._clear_preview()
            return
        if notes:
            self._notify.warning("SAM: " + "; ".join(notes) + ".")
        if not objects:
            self._commit_requested = False
            self._clear_preview()
            return
        gen = self._submitted = self._generation
        self._runner.submit(
            partial(self._session.predict, target, objects),
            on_done=partial(self._on_predicted, gen),
            on_error=self._on_job_error,
            on_cancel=self._on_job_cancelled,
            desc="SAM: segmenting prompts",
        )

    def _on_predicted(self, gen: int, prediction: Prediction) -> None:
        for note in prediction.notes:
            self._notify.warning(f"SAM: {note}.")
        if gen != self._generation:
            return  # the prompts changed meanwhile; a newer request is on its way
        self._prediction = prediction
        self._render_preview()
        if self._commit_requested:
            self._commit_requested = False
            self._write(prediction)

    def _on_job_error(self, exc: BaseException) -> None:
        self._commit_requested = False
        self._notify.job_error(exc)
        self._status.value = "Failed (see notification)"

    def _on_job_cancelled(self) -> None:
        self._commit_requested = False
        self._status.value = "Cancelled"

    def _on_busy(self, busy: bool) -> None:
        self._cancel_btn.enabled = busy
        if busy:
            self._status.value = _BUSY[1] if self._holder.is_loaded else _BUSY[0]
        elif self._status.value in _BUSY:
            self._status.value = "Ready"

    def cancel(self) -> None:
        """Stop the running prediction (a model call in progress finishes first)."""
        self._timer.stop()
        self._commit_requested = False
        self._runner.cancel()

    # ------------------------------------------------------------------ preview
    def _render_preview(self) -> None:
        pred = self._prediction
        if pred is None:
            self._clear_preview()
            return
        plane = np.zeros(pred.target.plane_shape, np.int32)
        for i, mask in enumerate(pred.chosen_masks()):
            plane[mask & (plane == 0)] = i + 1
        scale, translate = pred.target.frame.scale[-2:], pred.target.frame.translate[-2:]
        layer = self._preview
        if layer is not None and layer.data.shape == plane.shape:
            layer.scale, layer.translate = scale, translate
            layer.data = plane
        else:
            if layer is not None:
                self._viewer.layers.remove(layer)
            self._preview = Labels(
                plane,
                name="SAM preview",
                opacity=0.6,
                colormap=DirectLabelColormap(color_dict={None: "yellow", 0: "transparent"}),
                scale=scale,
                translate=translate,
            )
            with keep_active(self._viewer):
                boxes = self._prompts.boxes
                at = self._viewer.layers.index(boxes) if boxes in self._viewer.layers else None
                if at is None:
                    self._viewer.add_layer(self._preview)
                else:
                    self._viewer.layers.insert(at, self._preview)
            self._preview.editable = False
            self.reset_choices()
        self._candidate.value = pred.describe()

    def _clear_preview(self) -> None:
        self._prediction = None
        self._candidate.value = "-"
        if self._preview is not None and self._preview.data.any():
            self._preview.data = np.zeros_like(self._preview.data)

    def next_mask(self) -> None:
        """Show the next of SAM's candidate masks (no model call)."""
        if self._prediction is not None:
            self._prediction.rank = (self._prediction.rank + 1) % self._prediction.n_candidates()
            self._render_preview()

    # ------------------------------------------------------------------ commit
    def commit(self) -> None:
        """Write the previewed objects into the output layer (after pending predictions)."""
        stale = self._prediction is None and self._prompts.has_prompts()
        if self._timer.isActive() or stale and not self._runner.busy:
            self._commit_requested = True
            self.update_preview()
            return
        if self._runner.busy and self._submitted == self._generation:
            self._commit_requested = True
            return
        if self._prediction is None:
            self._notify.info("SAM: nothing to commit; add points or boxes first.")
            return
        self._write(self._prediction)

    def _output_layer(self, target: ImageTarget) -> Labels:
        layer = self._output.value
        if layer is not None and layer in self._viewer.layers:
            if layer.multiscale or tuple(layer.data.shape) != tuple(target.spatial_shape):
                raise TargetError(
                    f"The output layer '{layer.name}' has shape {tuple(layer.data.shape)} but "
                    f"the image needs {tuple(target.spatial_shape)}: choose 'New layer' as "
                    "Output."
                )
            return layer
        with keep_active(self._viewer):
            layer = self._viewer.add_labels(
                np.zeros(target.spatial_shape, np.int32),
                name="SAM labels",
                scale=target.frame.scale,
                translate=target.frame.translate,
            )
        self.reset_choices()
        self._output.value = layer
        return layer

    def _write(self, pred: Prediction) -> None:
        try:
            out = self._output_layer(pred.target)
        except TargetError as exc:
            self._notify.error(str(exc))
            return
        masks, overwrite = pred.chosen_masks(), bool(self._overwrite.value)
        plan = commit_masks(out, pred.target.slice_index, masks, overwrite, pred.provenance)
        self._last_output = out
        if plan.empty:
            self._notify.warning(
                f"SAM: {len(plan.empty)} object(s) lay entirely on existing labels and were not "
                "written (tick 'Overwrite existing labels' to replace them)."
            )
        n = len(plan.ids)
        self._status.value = f"Committed {n} object(s) to '{out.name}'" if n else "Nothing written"
        self.clear_prompts()

    def clear_prompts(self) -> None:
        """Remove all points and boxes and the preview."""
        self._timer.stop()
        self._generation += 1
        self._prompts.clear()
        self._clear_preview()

    def undo_commit(self) -> None:
        """Undo the last edit of the last output layer (same as Ctrl+Z on it)."""
        if self._last_output is not None:
            self._last_output.undo()


__all__ = ["PromptWidget"]
