"""The "Segment with prompts" dock widget: click points or draw boxes, see the mask, commit.

Prompts come from a Points and a Shapes layer (by default "SAM points" and "SAM boxes",
which the widget creates). Every edit is debounced, then the shown slice is embedded (cached)
and the objects predicted in a worker; the result appears in "SAM preview". Commit writes
the objects into the output Labels layer with new ids as one undoable edit and clears the
prompts. The widget follows the image the user opens or selects.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import napari
import numpy as np
from magicgui.widgets import Container
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.interaction import ModelHolder, Prediction, PromptSession
from napari_sam_ms.interaction_tiles import preview_ids

from .common import (
    NO_IMAGE,
    Notifier,
    PhaseStatus,
    camera,
    guarded,
    keep_active,
    on_first_show,
)
from .image_target import MAX_SIDE, ImageTarget, LayerSources, TargetError, resolve_chosen
from .labels_edit import commit_masks, new_label_data
from .prompt_controls import KEYS, PromptControls
from .prompt_follow import FollowViewer
from .prompt_layers import BG, FG, PromptLayers
from .workers import TaskRunner

DEBOUNCE_MS = 200
_PREVIEW_COLORS = ("yellow", "cyan", "magenta", "orange", "lime", "deepskyblue")


class PromptWidget(FollowViewer, PromptControls, Container):
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
        self._sources = LayerSources()  # lazy full-resolution planes for tiles
        self._runner = TaskRunner(on_busy=self._on_busy)
        self._prompts = PromptLayers(
            viewer,
            on_change=self._schedule,
            keys={
                KEYS["next"]: self.next_mask,
                KEYS["commit"]: self.commit,
                KEYS["per_point"]: self.toggle_per_point,
            },
            toggle_key=(KEYS["toggle"], self.toggle_label),
        )
        self._preview: Labels | None = None
        self._last_output: Labels | None = None
        self._prediction: Prediction | None = None
        self._generation = 0  # bumped whenever the prompts or the slice change
        self._submitted = -1  # generation of the newest request sent to the runner
        self._commit_requested = False
        self._activate_on_change = True  # image changes select the points layer
        self._syncing = False  # the widget, not the user, is updating the choosers
        self._alive = True
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_preview)
        super().__init__(widgets=self._build_controls(), labels=True)
        self._phase = PhaseStatus(self._holder, self._status, self._runner)
        self._wire_controls()
        self._connect_viewer()
        self._starting = True  # not docked yet, but the prompt layers are made now
        self._on_image_changed()
        self._starting = False
        self._show_filter = on_first_show(self.native, self._arm_fit)

    def _wire_controls(self) -> None:
        self._point_label.changed.connect(self._prompts.set_default_label)
        self._image.changed.connect(self._on_image_changed)
        self._points_choice.changed.connect(self._on_prompt_layer_chosen)
        self._boxes_choice.changed.connect(self._on_prompt_layer_chosen)
        self._per_point.changed.connect(self._on_mode_changed)
        self._invert.changed.connect(self._on_mode_changed)
        self._next.changed.connect(self.next_mask)
        self._commit_btn.changed.connect(self.commit)
        self._clear_btn.changed.connect(self.clear_prompts)
        self._undo_btn.changed.connect(self.undo_commit)
        self._cancel_btn.changed.connect(self.cancel)

    def _viewer_events(self) -> list[tuple[Any, Any]]:
        layers = self._viewer.layers.events
        return [
            (layers.inserted, self._on_layers_changed),
            (layers.removed, self._on_layers_changed),
            (layers.moved, self._on_layers_changed),
            (layers.inserted, self._on_layer_inserted),
            (self._viewer.layers.selection.events.active, self._on_active_changed),
            (self._viewer.dims.events.current_step, self._on_slice_changed),
            (camera(self._viewer).events.zoom, self._on_zoom),
        ]

    def _connect_viewer(self) -> None:
        for emitter, handler in self._viewer_events():
            emitter.connect(handler)
        self.native.destroyed.connect(lambda *_: self._teardown())

    def _teardown(self) -> None:
        """The dock widget is gone: stop timers and work, let go of the viewer's events."""
        self._alive = False
        with contextlib.suppress(RuntimeError):  # Qt may have deleted it already
            self._timer.stop()
        self._runner.shutdown()
        for emitter, handler in self._viewer_events():
            emitter.disconnect(handler)
        self._prompts.disconnect()

    def report_failure(self, action: str, exc: BaseException) -> None:
        """One line for an error in an event handler (see :func:`common.guarded`)."""
        self._commit_requested = False
        self._notify.error(f"SAM: {action} failed: {type(exc).__name__}: {exc}")
        self._status.value = f"Failed while {action} (see notification)"

    # ------------------------------------------------------------------ layers
    @property
    def points_layer(self):
        """The Points layer whose points are prompts (None until an image is chosen)."""
        return self._prompts.points

    @property
    def boxes_layer(self):
        """The Shapes layer whose rectangles are boxes."""
        return self._prompts.boxes

    @property
    def preview_layer(self) -> Labels | None:
        return self._preview

    @guarded("switching the point label")
    def toggle_label(self) -> None:
        """Switch new points between foreground and background (key T)."""
        self._point_label.value = BG if self._point_label.value == FG else FG

    @guarded("switching one object per point")
    def toggle_per_point(self) -> None:
        """Switch between all points = one object and one object per point (key O)."""
        self._per_point.value = not self._per_point.value

    @guarded("changing the mode")
    def _on_mode_changed(self, *_: Any) -> None:
        if self._prediction is not None or self._prompts.has_prompts():
            self._schedule()

    def _schedule(self, event: Any = None) -> None:
        self._generation += 1
        if self._alive:
            self._timer.start()

    # ------------------------------------------------------------------ predicting
    @guarded("reading the prompts")
    def update_preview(self) -> None:
        """Predict the current prompts now (the debounce timer calls this)."""
        self._timer.stop()
        if not self._alive:
            return
        try:
            image = self._image.value
            if image is None:
                raise TargetError(NO_IMAGE)
            point, invert = self._viewer.dims.point, bool(self._invert.value)
            choose = self._tiles.choose
            target = resolve_chosen(image, point, choose, self._sources, self.max_side, invert)
            objects, notes = self._prompts.collect(target, bool(self._per_point.value))
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

    @guarded("showing the prediction")
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
        self._phase.follow(busy)
        if busy:
            self._status.value = "Segmenting..." if self._holder.is_loaded else "Loading model..."
        elif self._status.value in self._phase.busy:  # its texts, the phases' included
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
        # the whole plane; on tiled planes over PREVIEW_WHOLE_PIXELS only the objects' crops
        shape = pred.target.plane_shape
        (y0, x0, _, _), plane = preview_ids(pred.chosen_masks(), pred.boxes, shape)
        scale = np.asarray(pred.target.frame.scale[-2:], float)
        translate = np.asarray(pred.target.frame.translate[-2:], float) + scale * (y0, x0)
        layer = self._preview
        if layer is not None and layer.data.shape == plane.shape:
            layer.scale, layer.translate = scale, translate
            layer.data = plane
        else:
            if layer is not None:
                self._viewer.layers.remove(layer)
            self._add_preview(plane, scale, translate)
        self._candidate.value = pred.describe()
        self._status.value = "; ".join(t for t in (pred.status, pred.advice()) if t) or "Ready"

    def _add_preview(self, plane: np.ndarray, scale: Any, translate: Any) -> None:
        """The "SAM preview" layer, under the boxes; each object in its own colour."""
        colors: dict[Any, str] = {None: _PREVIEW_COLORS[0], 0: "transparent"}
        for i in range(1, 64):
            colors[i] = _PREVIEW_COLORS[(i - 1) % len(_PREVIEW_COLORS)]
        self._preview = Labels(
            plane,
            name="SAM preview",
            opacity=0.6,
            colormap=DirectLabelColormap(color_dict=colors),
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

    def _clear_preview(self) -> None:
        self._prediction = None
        self._candidate.value = "-"
        if self._preview is not None and self._preview.data.any():
            self._preview.data = np.zeros_like(self._preview.data)

    @guarded("showing the next mask")
    def next_mask(self) -> None:
        """Show the next of SAM's candidate masks (no model call)."""
        if self._prediction is not None:
            self._prediction.rank = (self._prediction.rank + 1) % self._prediction.n_candidates()
            self._render_preview()

    # ------------------------------------------------------------------ commit
    @guarded("committing")
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
                new_label_data(target.spatial_shape),
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
        (y0, x0, _, _), masks = pred.region_masks()  # tiles: only the objects' region
        overwrite, where = bool(self._overwrite.value), pred.target.slice_index
        plan = commit_masks(out, where, masks, overwrite, pred.provenance, origin=(y0, x0))
        self._last_output = out
        if plan.empty:
            self._notify.warning(
                f"SAM: {len(plan.empty)} object(s) lay entirely on existing labels and were not "
                "written (tick 'Overwrite existing labels' to replace them)."
            )
        n = len(plan.ids)
        self._status.value = f"Committed {n} object(s) to '{out.name}'" if n else "Nothing written"
        self.clear_prompts()

    @guarded("clearing the prompts")
    def clear_prompts(self) -> None:
        """Remove all points and boxes and the preview."""
        self._timer.stop()
        self._generation += 1
        self._prompts.clear()
        self._clear_preview()

    @guarded("undoing the commit")
    def undo_commit(self) -> None:
        """Undo the last edit of the last output layer (same as Ctrl+Z on it)."""
        if self._last_output is not None:
            self._last_output.undo()


__all__ = ["PromptWidget"]
