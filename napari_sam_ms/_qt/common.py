"""Small helpers shared by the widgets: layer lists, notifications, layer selection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_sam_ms.loader import ModelLoadError

NO_IMAGE = (
    "No image layer to segment: open an image (File > Open, or File > Open Sample > "
    "SAM on MindSpore > Fluorescent nuclei (synthetic)) and choose it under 'Image'."
)


def image_layers(viewer: Any) -> list[Image]:
    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def image_layer_choice(viewer: Any) -> Any:
    """The "Image" combo box both widgets start with."""
    from magicgui.widgets import ComboBox

    return ComboBox(
        name="image_layer",
        label="Image",
        choices=lambda _w: image_layers(viewer),
        tooltip="The image to segment. For stacks, the slice shown in the viewer is used.",
    )


def labels_layers(viewer: Any, exclude: tuple = ()) -> list[Labels]:
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Labels) and not any(layer is e for e in exclude)
    ]


def button_row(name: str, *widgets: Any) -> Any:
    """Buttons side by side, named for tests and shown without a label."""
    from magicgui.widgets import Container

    row = Container(name=name, widgets=list(widgets), layout="horizontal", labels=False)
    row.label = ""
    return row


@contextmanager
def keep_active(viewer: Any) -> Iterator[None]:
    """Restore the selected layer after adding layers (adding one selects it)."""
    active = viewer.layers.selection.active
    try:
        yield
    finally:
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active


class Notifier:
    """napari notifications, without repeating the same warning over and over."""

    def __init__(self) -> None:
        self._last = ""

    def info(self, message: str) -> None:
        show_info(message)

    def warning(self, message: str, once: bool = True) -> None:
        if once and message == self._last:
            return
        self._last = message
        show_warning(message)

    def error(self, message: str) -> None:
        self._last = message
        show_error(message)

    def reset(self) -> None:
        self._last = ""

    def job_error(self, exc: BaseException) -> None:
        """Report a failed job: model problems as they are, others with context."""
        if isinstance(exc, ModelLoadError):
            self.error(str(exc))
        else:
            self.error(f"SAM failed: {type(exc).__name__}: {exc}")


__all__ = [
    "NO_IMAGE",
    "Notifier",
    "button_row",
    "image_layer_choice",
    "image_layers",
    "keep_active",
    "labels_layers",
]
