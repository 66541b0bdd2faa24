"""The "Large images" controls of both widgets: tiling auto/on/off, tile size, halo, zoom.

Tiles answer prompts and whole-image runs at the plane's own resolution
(:mod:`napari_sam_ms.tiled`). *auto* tiles a plane larger than about 1.5 times the model's
input (:func:`~napari_sam_ms.utils.tiling.needs_tiling`), or any plane with a zoom above 1.
The help texts come from the whole-image settings table (:mod:`napari_sam_ms.amg_settings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox

from napari_sam_ms.amg_settings import help_text
from napari_sam_ms.interaction import ModelHolder, TileSpec
from napari_sam_ms.utils.tiling import (
    ZOOMS,
    TileGrid,
    check_patch,
    default_halo,
    default_tile_shape,
    needs_tiling,
    suggest_zoom,
)
from napari_sam_ms.weights.config import CONFIGS, DEFAULT_SIZES

MODES = ("auto", "on", "off")
SIZE_WINDOW = 4096  # object sizes are measured in at most this many pixels a side


def model_geometry(holder: ModelHolder) -> tuple[int, int]:
    """(model input side, encoder patch) of the chosen model; before it is loaded, from its
    configuration (the patch then guessed: 16 for SAM's 1024 px input, else 8)."""
    model = holder.get().model if holder.is_loaded else None
    encoder = getattr(model, "image_encoder", None)
    prompt = getattr(model, "prompt_encoder", None)
    if encoder is not None and prompt is not None:  # the loaded model says
        side = int(encoder.img_size)
        return side, side // int(prompt.image_embedding_size[0])
    config = CONFIGS.get(holder.model_type or "", {})
    side = int(config.get("image_size", DEFAULT_SIZES["image_size"]))
    return side, 16 if side >= 1024 else 8


def median_diameter(layer: Any, slice_index: tuple[int, ...] = ()) -> float:
    """Median equivalent diameter (px) of the objects in a Labels layer's plane (its central
    window of at most ``SIZE_WINDOW`` px a side); 0 when it holds none."""
    if layer is None:
        return 0.0
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    lead = tuple(slice_index[: max(0, data.ndim - 2)])
    lead = lead + (0,) * (data.ndim - 2 - len(lead))
    h, w = data.shape[-2:]
    y0, x0 = max(0, (h - SIZE_WINDOW) // 2), max(0, (w - SIZE_WINDOW) // 2)
    plane = np.asarray(data[lead + (slice(y0, y0 + SIZE_WINDOW), slice(x0, x0 + SIZE_WINDOW))])
    _, areas = np.unique(plane[plane > 0], return_counts=True)
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0


class TileControls(Container):
    """A collapsible "Large images" group; :meth:`choose` turns it into a TileSpec.

    Args:
        holder: the widget's model holder (for the model's input size).
        labels: gives the Labels layer (and slice) whose objects size the zoom suggestion.
        on_change: called when a setting changes.
    """

    def __init__(
        self,
        holder: ModelHolder,
        labels: Callable[[], tuple[Any, tuple[int, ...]]],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._holder, self._labels, self._on_change = holder, labels, on_change
        self.plane_shape: tuple[int, int] | None = None
        self._toggle = PushButton(name="tiles_toggle", text="▸ Large images")
        self._toggle.tooltip = "Show or hide the tile settings (tiling, tile size, halo, zoom)."
        self.summary = Label(name="tiles_summary", value="")
        self.summary.native.setWordWrap(True)
        self.mode = ComboBox(name="tiling", label="Tiling", choices=MODES, value="auto")
        self.mode.tooltip = (
            "auto: tile planes larger than about 1.5 times the model's input (or any plane "
            "with a zoom above 1); on: always; off: shrink the plane to the model's input. "
            + help_text("tile_shape")
        )
        self.tile = SpinBox(
            name="tile_size", label="Tile size (0: default)", min=0, max=16384, step=32
        )
        self.tile.tooltip = (
            "Inner tile size in px (default: the model's input / zoom minus twice the halo). "
            + help_text("tile_shape")
        )
        self.halo = SpinBox(
            name="halo", label="Halo (-1: default)", min=-1, max=4096, step=8, value=-1
        )
        self.halo.tooltip = help_text("halo")
        self.zoom = ComboBox(name="zoom", label="Zoom", choices=list(ZOOMS), value=1)
        self.zoom.tooltip = help_text("zoom")
        self.size = SpinBox(
            name="object_size", label="Object size (px; 0: from labels)", min=0, max=4096, step=1
        )
        self.size.tooltip = (
            "Rough diameter of your objects in pixels, for 'Suggest zoom'. Unset: the median "
            "diameter of the objects already in the output Labels layer."
        )
        self._suggest = PushButton(name="suggest_zoom", text="Suggest zoom")
        self._suggest.tooltip = (
            "Set the zoom so that objects of this size span at least two cells of the "
            "model's embedding (1, 2 or 4)."
        )
        self._body = Container(
            widgets=[self.mode, self.tile, self.halo, self.zoom, self.size, self._suggest],
            labels=True,
        )
        self._body.visible = self._open = False
        super().__init__(widgets=[self._toggle, self.summary, self._body], labels=False)
        self._toggle.changed.connect(self.toggle)
        self._suggest.changed.connect(self.suggest)
        for w in (self.mode, self.tile, self.halo, self.zoom):
            w.changed.connect(self._changed)

    def toggle(self, *_: Any) -> None:
        """Show or hide the settings."""
        self._open = not self._open
        self._body.visible = self._open
        self._toggle.text = ("▾" if self._open else "▸") + " Large images"

    def _changed(self, *_: Any) -> None:
        self.refresh()
        if self._on_change is not None:
            self._on_change()

    def set_plane(self, plane_shape: tuple[int, int] | None) -> None:
        """The (H, W) of the chosen image's full-resolution plane (None: no image)."""
        self.plane_shape = None if plane_shape is None else tuple(int(v) for v in plane_shape)
        self.refresh()

    def refresh(self) -> None:
        """Say in the summary line what the next prompt or run will do."""
        if self.plane_shape is None:
            self.summary.value = "Tiling: no image"
            return
        try:
            self.summary.value = self.choose(self.plane_shape)[1]
        except ValueError as exc:
            self.summary.value = f"Tiling: {exc}"

    def choose(self, plane_shape: tuple[int, int]) -> tuple[TileSpec | None, str]:
        """(tiles or None, one line saying what is done) for a plane of ``plane_shape``.

        Raises:
            ValueError: tile size and halo that cannot work together.
        """
        side, patch = model_geometry(self._holder)
        mode, zoom = str(self.mode.value), int(self.zoom.value)
        h, w = (int(v) for v in plane_shape)
        if mode == "off":
            return None, f"Tiling off: the {h}x{w} plane is shrunk to the model's {side} px input"
        if mode == "auto" and zoom == 1 and not needs_tiling((h, w), side):
            return None, f"Tiling off (auto): the {h}x{w} plane fits the model's {side} px input"
        halo = default_halo(side, zoom) if self.halo.value < 0 else (self.halo.value,) * 2
        tile = (
            default_tile_shape(side, halo, zoom) if not self.tile.value else (self.tile.value,) * 2
        )
        grid = TileGrid((h, w), tile, halo)
        check_patch(tile, zoom, patch)
        how = "on (auto)" if mode == "auto" else "on"
        text = (
            f"Tiling {how}: {grid.shape[0]}x{grid.shape[1]} tiles of {tile[0]} px, halo "
            f"{halo[0]}, zoom {zoom}, at full resolution"
        )
        return TileSpec(tuple(tile), tuple(halo), zoom), text

    def suggest(self, *_: Any) -> None:
        """Set the zoom from the object size (or the committed objects' median diameter)."""
        d = float(self.size.value)
        source = "the size given"
        if d <= 0:
            layer, index = self._labels()
            d, source = median_diameter(layer, index), "the committed objects"
        if d <= 0:
            self.summary.value = "Suggest zoom: give an object size, or commit a few objects first"
            return
        side, patch = model_geometry(self._holder)
        zoom = suggest_zoom(d, side, patch)
        self.zoom.value = zoom
        self.refresh()
        self.summary.value += f" (zoom {zoom} suggested for objects of ~{d:.0f} px, {source})"


__all__ = ["MODES", "TileControls", "median_diameter", "model_geometry"]
