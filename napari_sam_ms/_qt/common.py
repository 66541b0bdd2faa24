"""Small helpers shared by the widgets: layer lists, notifications, layer selection."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_sam_ms.loader import ModelLoadError

_log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

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


def on_first_show(widget: Any, callback: Callable[[], None]) -> Any:
    """Call ``callback`` once, just after ``widget`` is first shown (e.g. docked), when the
    layout has settled. Returns the event filter; keep a reference to it."""
    from qtpy.QtCore import QEvent, QObject, QTimer

    class _FirstShow(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.Show:
                obj.removeEventFilter(self)
                QTimer.singleShot(0, callback)
            return False

    show_filter = _FirstShow()
    widget.installEventFilter(show_filter)
    return show_filter


def is_deleted_error(exc: BaseException) -> bool:
    """Qt's error for using a widget after it was deleted."""
    return isinstance(exc, RuntimeError) and "has been deleted" in str(exc)


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def guarded(action: str) -> Callable[[F], F]:
    """Wrap a widget's event handler (layer edits, timers, keys) so that an error becomes
    one line for the user, never a traceback: the widget's ``report_failure(action, exc)``
    is called instead (the traceback goes to the debug log)."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # everything: no traceback may reach the user
                _log.debug("%s failed", action, exc_info=True)
                if is_deleted_error(exc):  # the dock widget is gone (e.g. napari closing)
                    self._alive = False
                    return None
                with contextlib.suppress(RuntimeError):
                    self.report_failure(action, exc)
                return None

        return run  # type: ignore[return-value]

    return wrap


__all__ = [
    "NO_IMAGE",
    "Notifier",
    "button_row",
    "camera",
    "guarded",
    "image_layer_choice",
    "image_layers",
    "is_deleted_error",
    "keep_active",
    "labels_layers",
    "on_first_show",
]


PHASE_TEXTS = {  # the model holder's phase -> status while a job runs
    "loading": "Loading model...",
    "compiling": "Compiling (first time only)...",
    "embedding": "Embedding image...",
    "predicting": "Predicting...",
}
SLOW_PHASES = {k: PHASE_TEXTS[k] for k in ("loading", "compiling")}  # worth a word in long jobs


class PhaseStatus:
    """While a widget's job runs, show what its model is doing (the holder's phase: loading,
    compiling, ...) in the status label every 0.1 s, unless the label says something else.

    Args:
        holder: the widget's model holder (its ``phase``).
        status: the status label.
        runner: the widget's task runner (its ``busy``).
        texts: phase -> status text (phases not listed leave the status as it is).
        busy: other texts the status may replace.
    """

    def __init__(
        self,
        holder: Any,
        status: Any,
        runner: Any,
        texts: dict[str, str] = PHASE_TEXTS,
        busy: tuple[str, ...] = ("Loading model...", "Segmenting..."),
    ) -> None:
        from qtpy.QtCore import QTimer

        self._holder, self._status, self._runner, self.texts = holder, status, runner, texts
        self.busy = (*busy, *texts.values())
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show)

    def follow(self, busy: bool) -> None:
        """Start (a job began) or stop following the phase."""
        if busy:
            self._timer.start()
        else:
            self._timer.stop()

    def _show(self) -> None:
        text = self.texts.get(getattr(self._holder, "phase", ""))
        try:
            if not self._runner.busy:
                self._timer.stop()
            elif text and self._status.value in self.busy:
                self._status.value = text
        except RuntimeError:  # the widget was closed while its job ran: its label is gone
            self._timer.stop()
