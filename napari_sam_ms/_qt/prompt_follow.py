"""How the prompt widget follows the viewer: the image opened or selected, prompt layers
deleted or chosen, the canvas size and zoom."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QTimer

from napari_sam_ms.utils.image import looks_dark_on_bright

from .common import guarded
from .image_target import TargetError, full_plane_shape, resolve_target

FIT_SETTLE_MS = 150  # the canvas size is settled when it did not change for this long
DARK_HINT = (
    "The image looks dark-on-bright (e.g. bright-field): if masks come out empty, tick Invert."
)


class FollowViewer:
    """Mixin for the prompt widget: keeps its image choice, prompt layers, status and view in
    step with what the user does in the viewer. Every handler is :func:`guarded`."""

    _viewer: Any
    _prompts: Any
    _image: Any
    _points_choice: Any
    _boxes_choice: Any
    _invert: Any
    _tiles: Any
    _status: Any
    _notify: Any
    _timer: Any
    _alive: bool
    _generation: int
    _activate_on_change: bool
    _syncing: bool
    max_side: int

    def _in_use(self) -> bool:
        """Docked, or shown on its own: a widget taken out of its dock stops following."""
        native = self.native  # type: ignore[attr-defined]
        shown = native.parent() is not None or native.isVisible()
        return self._alive and (shown or getattr(self, "_starting", False))

    @guarded("updating the layer lists")
    def _on_layers_changed(self, event: Any = None) -> None:
        lost = self._prompts.forget_removed()
        for attr in ("_preview", "_last_output"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self._viewer.layers:
                setattr(self, attr, None)
        self._syncing = True
        try:
            self.reset_choices()
        finally:
            self._syncing = False
        if lost:  # after the removal is over (e.g. layers.clear() removes one by one)
            QTimer.singleShot(0, partial(self._restore_prompt_layers, lost))

    @guarded("restoring the prompt layers")
    def _restore_prompt_layers(self, lost: list[str]) -> None:
        image = self._image.value
        if not self._in_use():
            return
        names = " and ".join(f"'{name}'" for name in lost)
        if image is None or image not in self._viewer.layers:
            self._status.value = f"{names} deleted: choosing an image re-creates them"
            return
        self._prompts.ensure(image)
        self._sync_choosers()
        self._prompts.activate()
        now = f"'{self._prompts.points.name}' and '{self._prompts.boxes.name}'"
        self._status.value = f"{names} deleted: prompts now go to {now}"

    def _sync_choosers(self) -> None:
        """Show the prompt layers in use in the choosers."""
        self._syncing = True
        try:
            self.reset_choices()
            for chooser, layer in (
                (self._points_choice, self._prompts.points),
                (self._boxes_choice, self._prompts.boxes),
            ):
                if layer is not None and chooser.value is not layer:
                    chooser.value = layer
        finally:
            self._syncing = False

    @guarded("choosing a prompt layer")
    def _on_prompt_layer_chosen(self, *_: Any) -> None:
        if self._syncing:
            return
        self._prompts.use(self._points_choice.value, self._boxes_choice.value)
        self._clear_preview()
        self._schedule()

    @guarded("following the new image")
    def _on_layer_inserted(self, event: Any) -> None:
        if isinstance(event.value, Image):  # after napari made it the active layer
            QTimer.singleShot(0, partial(self._follow_new_image, event.value))

    @guarded("following the new image")
    def _follow_new_image(self, layer: Image) -> None:
        if self._in_use() and layer in self._viewer.layers:
            self._select_image(layer, activate=True)
            self._prompts.activate()

    @guarded("following the selected image")
    def _on_active_changed(self, event: Any = None) -> None:
        layer = self._viewer.layers.selection.active
        if not self._in_use():
            return
        if isinstance(layer, Image) and layer is not self._image.value:
            self._select_image(layer, activate=False)  # the user selected it: keep it so

    def _select_image(self, layer: Image, activate: bool) -> None:
        self._activate_on_change = activate
        try:
            self.reset_choices()
            self._image.value = layer
        finally:
            self._activate_on_change = True

    @guarded("changing the image")
    def _on_image_changed(self, *_: Any) -> None:
        image = self._image.value
        self._timer.stop()
        self._generation += 1
        self._clear_preview()
        self._notify.reset()
        self._status.value = "Ready"  # nothing said about the previous image holds
        self._tiles.set_plane(None if image is None else full_plane_shape(image))
        if image is None or not self._in_use():
            return
        self._prompts.ensure(image)
        self._sync_choosers()
        if self._activate_on_change:
            self._prompts.activate()
        self._suggest_polarity(image)

    def _suggest_polarity(self, image: Image) -> None:
        """Say so when the image looks dark-on-bright and Invert is off (in-memory images)."""
        if self._invert.value or not isinstance(image.data, np.ndarray):
            return
        try:
            target = resolve_target(image, self._viewer.dims.point, self.max_side)
        except TargetError:
            return  # the first prediction says why
        if looks_dark_on_bright(target.rgb):
            self._status.value = DARK_HINT

    @guarded("changing the slice")
    def _on_slice_changed(self, event: Any = None) -> None:
        if self._prediction is not None or self._prompts.has_prompts():
            self._clear_preview()
            self._schedule()

    @guarded("resizing the point markers")
    def _on_zoom(self, event: Any = None) -> None:
        self._prompts.fit_markers()

    def _arm_fit(self) -> None:
        """The widget was first shown (docked): fit the view once the canvas size settles."""
        self._fit_timer = QTimer()
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(FIT_SETTLE_MS)
        self._fit_timer.timeout.connect(self._fit_view)
        size = self._canvas_size_event()
        if size is not None:
            size.connect(self._on_canvas_resized)
        self._fit_timer.start()

    def _canvas_size_event(self) -> Any:
        canvas = getattr(self._viewer, "canvas", None)  # napari >= 0.6
        return getattr(getattr(canvas, "events", None), "size", None)

    def _on_canvas_resized(self, event: Any = None) -> None:
        timer = getattr(self, "_fit_timer", None)
        if timer is not None:
            timer.start()  # wait until the size stops changing

    @guarded("fitting the view")
    def _fit_view(self) -> None:
        """Fit the view once, after docking the widget narrowed the canvas."""
        size = self._canvas_size_event()
        if size is not None:
            size.disconnect(self._on_canvas_resized)
        self._fit_timer = None
        if self._alive:
            self._viewer.reset_view()
            self._prompts.fit_markers()


__all__ = ["DARK_HINT", "FIT_SETTLE_MS", "FollowViewer"]
