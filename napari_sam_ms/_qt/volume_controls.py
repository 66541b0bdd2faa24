"""The Volumes widget's controls (a mixin creating them as attributes of the widget)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from napari_sam_ms.propagate import DEFAULT_PROMPT, IOU_STOP
from napari_sam_ms.volumes.slice_prompts import PROMPT_KINDS

from .common import button_row, image_layer_choice, labels_layers
from .model_choice import ModelChoice
from .volume_target import stack_axes

PROPAGATE_KEY = "p"
AUTO_LABEL = 0  # the "Object" spin box value meaning: the last committed object
HELP = (
    "Commit an object on one or more slices (Segment with prompts), then Propagate (P):\n"
    "it follows the object slice by slice in both directions, filling gaps between the\n"
    "slices it is on. One Ctrl+Z on the labels layer undoes the whole propagation."
)


class VolumeControls:
    """Mixin for the Volumes widget: ``_image``, ``_labels_choice``, ``_model``, ``_axis``,
    ``_object_id``, ``_prompt``, ``_iou_stop``, ``_overwrite``, ``_keep_partial``, buttons,
    ``_auto_precompute`` and ``_status``. Needs ``_viewer`` and ``_holder``."""

    _viewer: Any
    _holder: Any

    def _build_controls(self) -> list:
        self._image = image_layer_choice(self._viewer)
        self._image.tooltip = "The stack to propagate through (3D or more: z-stack or time-lapse)."
        self._labels_choice = ComboBox(
            name="labels_layer",
            label="Labels",
            choices=lambda _w: labels_layers(self._viewer),
            tooltip="The labels layer holding the object (e.g. 'SAM labels'); the propagated "
            "slices are written into it with the object's id.",
        )
        self._model = ModelChoice(self._holder)
        self._axis = ComboBox(
            name="axis",
            label="Along",
            choices=lambda _w: stack_axes(self._image.value),
            tooltip="The stack axis to propagate along. For (t, z, y, x) data choose z to "
            "follow an object through the volume, or t to track it over time; the other "
            "axis stays at the slice the viewer shows.",
        )
        self._object_id = SpinBox(
            name="object_label",
            label="Object",
            min=0,
            max=2**31 - 1,
            value=AUTO_LABEL,
            tooltip="The label id to propagate. 0: the last object committed into the labels "
            "layer (else the layer's selected label). It is propagated from every slice "
            "it is on.",
        )
        self._prompt = ComboBox(
            name="prompt_kind",
            label="Prompt",
            choices=list(PROMPT_KINDS),
            value=DEFAULT_PROMPT,
            tooltip="How each slice is prompted from the previous slice's mask: its enlarged "
            "box, a point inside with background points around it, and/or the previous "
            f"prediction as a mask. Default {DEFAULT_PROMPT}: measured best for moving and "
            "larger objects, near the best for small static ones.",
        )
        self._iou_stop = FloatSpinBox(
            name="iou_stop",
            label="IoU stop",
            min=0.0,
            max=1.0,
            step=0.05,
            value=IOU_STOP,
            tooltip="A direction stops when the new slice's mask overlaps the previous one "
            "by less than this (intersection over union): the object changed too much.",
        )
        self._overwrite = CheckBox(
            name="overwrite",
            text="Overwrite existing labels",
            value=False,
            tooltip="Off: pixels of other labels are kept. On: the object takes them.",
        )
        self._keep_partial = CheckBox(
            name="keep_partial",
            text="Keep slices done when cancelled",
            value=False,
            tooltip="On: Cancel writes the slices propagated so far. Off: Cancel writes nothing.",
        )
        return [
            self._image,
            self._labels_choice,
            self._model,
            self._axis,
            self._object_id,
            self._prompt,
            self._iou_stop,
            self._overwrite,
            self._keep_partial,
            *self._action_controls(),
        ]

    def _action_controls(self) -> list:
        self._propagate_btn = PushButton(name="propagate", text="Propagate (P)")
        self._cancel_btn = PushButton(name="cancel", text="Cancel", enabled=False)
        self._undo_btn = PushButton(name="undo", text="Undo")
        self._precompute_btn = PushButton(name="precompute", text="Precompute slice embeddings")
        self._precompute_btn.tooltip = (
            "Embed every slice of the stack in the background (cached), so propagation and "
            "clicks on other slices do not wait for the model. Slices already cached are skipped."
        )
        self._auto_precompute = CheckBox(
            name="auto_precompute",
            text="Precompute when a stack is chosen",
            value=True,
            tooltip="Start precomputing whenever the image or axis changes (uses the CPU "
            "in the background, pausing while you click: the widgets share the model and "
            "its embeddings).",
        )
        self._status = Label(name="status", label="Status", value="Ready")
        self._status.native.setWordWrap(True)  # long messages wrap, not widen the dock
        return [
            button_row("actions", self._propagate_btn, self._cancel_btn, self._undo_btn),
            button_row("embeddings", self._precompute_btn),
            self._auto_precompute,
            self._status,
            Container(widgets=[Label(name="help", value=HELP)], labels=False),
        ]


__all__ = ["AUTO_LABEL", "HELP", "PROPAGATE_KEY", "VolumeControls"]
