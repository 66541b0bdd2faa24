"""The controls of the "Segment with prompts" widget: built here, wired by the widget."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, RadioButtons
from napari.layers import Labels, Points, Shapes

from .common import button_row, image_layer_choice, labels_layers
from .model_choice import ModelChoice
from .prompt_layers import BG, BOXES_NAME, FG, POINTS_NAME
from .tile_controls import TileControls

KEYS = {"toggle": "t", "next": "m", "commit": "c", "per_point": "o"}
HELP = (
    "Points: click in the points layer (T: foreground/background).\n"
    "Boxes: draw rectangles in the boxes layer; points inside refine them.\n"
    "O: one object per point.  M: next mask.  C: commit.  Ctrl+Z on the output: undo."
)


class PromptControls:
    """Mixin for the prompt widget: creates its controls as attributes (``_image``,
    ``_points_choice``, ``_per_point``, ``_invert``, ``_status``...). Needs ``_viewer``,
    ``_holder`` and ``_preview`` on the widget."""

    _viewer: Any
    _holder: Any
    _preview: Labels | None
    _on_mode_changed: Any

    def _build_controls(self) -> list:
        self._image = image_layer_choice(self._viewer)
        self._model = ModelChoice(self._holder)
        self._tiles = TileControls(self._holder, self._sizing_labels, self._on_tiles_changed)
        self._model.chosen.connect(self._tiles.refresh)
        self._points_choice = ComboBox(
            name="points_layer",
            label="Points",
            choices=self._layer_choices(Points),
            tooltip=f"Points layer whose points are prompts (default '{POINTS_NAME}'); any "
            "Points layer works. A 'label' feature of 0 marks background points; without "
            "that feature every point is foreground.",
        )
        self._boxes_choice = ComboBox(
            name="boxes_layer",
            label="Boxes",
            choices=self._layer_choices(Shapes),
            tooltip=f"Shapes layer whose rectangles are boxes (default '{BOXES_NAME}'); any "
            "Shapes layer works (other shapes than rectangles are ignored).",
        )
        self._output = ComboBox(
            name="output_layer",
            label="Output",
            choices=self._output_choices,
            tooltip="Labels layer that receives committed objects. 'New layer' creates "
            "'SAM labels' on the first commit.",
        )
        return [
            self._image,
            self._model,
            self._points_choice,
            self._boxes_choice,
            self._output,
            *self._mode_controls(),
            self._tiles,
            *self._action_controls(),
        ]

    def _sizing_labels(self) -> tuple[Any, tuple[int, ...]]:
        """The Labels layer whose objects size 'Suggest zoom' (the output), and the slice."""
        layer = self._output.value
        lead = max(0, self._viewer.dims.ndim - 2)
        return layer, tuple(int(v) for v in self._viewer.dims.current_step[:lead])

    def _on_tiles_changed(self) -> None:
        """A tile setting changed (the widget re-predicts its prompts)."""
        self._on_mode_changed()

    def _mode_controls(self) -> list:
        """Point label, one object per point, invert, overwrite and the candidate shown."""
        self._point_label = RadioButtons(
            name="point_label",
            label="New points",
            choices=[("Foreground", FG), ("Background", BG)],
            value=FG,
            orientation="horizontal",
            tooltip="Label of the next points you click: foreground (green) marks the "
            "object, background (red) excludes a region. Key T toggles.",
        )
        self._per_point = CheckBox(
            name="per_point",
            text="One object per point (O)",
            value=False,
            tooltip="Off (SAM's way): all points outside boxes are one object. On: each "
            "foreground point is its own object (all predicted in one model call); a "
            "background point applies to the object whose foreground point is nearest. "
            "Key O toggles. Boxes are one object each either way.",
        )
        self._invert = CheckBox(
            name="invert",
            text="Invert (model input only)",
            value=False,
            tooltip="The model sees the image inverted (255 - value): for dark objects on a "
            "bright background (bright-field, H&E) with models that expect bright objects. "
            "The image layer is not changed.",
        )
        self._overwrite = CheckBox(
            name="overwrite",
            text="Overwrite existing labels",
            value=False,
            tooltip="Off (default): committed objects only fill unlabelled pixels, so nothing "
            "you segmented before is lost. On: new objects replace existing labels.",
        )
        self._candidate = Label(name="candidate", label="Mask", value="-")
        return [self._point_label, self._per_point, self._invert, self._overwrite, self._candidate]

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
            tooltip="Write the previewed object(s) into the output layer, each with a new id "
            "(key C). Undo with Ctrl+Z on the output layer or 'Undo commit'.",
        )
        self._clear_btn = PushButton(name="clear_button", text="Clear prompts")
        self._undo_btn = PushButton(name="undo_button", text="Undo commit")
        self._cancel_btn = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self._status = Label(name="status", label="Status", value="Ready")
        self._status.native.setWordWrap(True)  # long advice must not widen the dock
        return [
            button_row("mask_buttons", self._next, self._clear_btn),
            button_row("commit_buttons", self._commit_btn, self._undo_btn, self._cancel_btn),
            self._status,
            Container(widgets=[Label(name="help", value=HELP)], labels=False),
        ]

    def _layer_choices(self, kind: type) -> Any:
        def choices(_w: Any = None) -> list:
            layers = self._viewer.layers
            return [(layer.name, layer) for layer in layers if isinstance(layer, kind)]

        return choices

    def _output_choices(self, _w: Any = None) -> list:
        exclude = (self._preview,) if self._preview is not None else ()
        layers = labels_layers(self._viewer, exclude=exclude)
        return [("New layer (SAM labels)", None)] + [(layer.name, layer) for layer in layers]


__all__ = ["HELP", "KEYS", "PromptControls"]
