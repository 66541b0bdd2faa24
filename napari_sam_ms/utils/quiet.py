"""Third-party warnings and log lines, caught and turned into one-line messages (stdlib only).

Image libraries talk on their own: tifffile logs ``<tifffile.TiffPages @8> invalid offset to
first page ...`` through :mod:`logging`, Pillow and numpy raise :mod:`warnings`. Around reading
and writing, :func:`captured` collects them instead of letting them print, so the caller can
say what matters in its own words, naming the file. :func:`one_line_messages` makes every
warning and log line left (the project's own included) one line for a command line, and
drops warnings meant for developers (deprecations and the like).

``warnings.catch_warnings`` changes process-wide state: text warned by another thread while a
block runs is caught with it.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Loggers of the libraries that read and write images for us.
IMAGE_LOGGERS = ("tifffile", "PIL", "imageio")
#: Warnings about code, not about the user's data: never shown to users.
DEVELOPER_WARNINGS: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    ImportWarning,
    ResourceWarning,
    SyntaxWarning,
)
_REPR = re.compile(r"<tifffile\.[^<>]*>\s*")  # tifffile names its objects in its messages


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line: library object names removed, whitespace collapsed, cut at
    ``limit`` characters."""
    flat = " ".join(_REPR.sub("", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Captured:
    """What the libraries said inside a :func:`captured` block."""

    def __init__(self) -> None:
        self.logged: list[str] = []
        self.warned: list[warnings.WarningMessage] = []

    def lines(self) -> list[str]:
        """Log lines (WARNING and worse) then warnings, one line each, each text once;
        developer warnings left out."""
        texts = list(self.logged)
        texts += [
            str(w.message) for w in self.warned if not issubclass(w.category, DEVELOPER_WARNINGS)
        ]
        seen: dict[str, None] = {}
        for text in texts:
            line = one_line(text)
            if line:
                seen.setdefault(line, None)
        return list(seen)

    def first(self) -> str | None:
        """The first line, or None when nothing was said."""
        lines = self.lines()
        return lines[0] if lines else None


class _ToList(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.append(record.getMessage())
        except Exception:  # a badly formatted record must not break reading
            self.sink.append(str(record.msg))


@contextmanager
def captured(loggers: tuple[str, ...] = IMAGE_LOGGERS) -> Iterator[Captured]:
    """Collect, instead of printing, every warning and the WARNING-or-worse lines of
    ``loggers`` made inside the block.

    Yields:
        A :class:`Captured` that fills as the block runs (usable inside and after it).
    """
    found = Captured()
    handler = _ToList(found.logged)
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found.warned = caught
            yield found
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


class _ToWriter(logging.Handler):
    def __init__(self, write: Callable[[str], Any]) -> None:
        super().__init__(logging.WARNING)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(one_line(record.getMessage()))
        except Exception:
            self.handleError(record)


@contextmanager
def one_line_messages(write: Callable[[str], Any]) -> Iterator[None]:
    """Inside the block, each warning shown and each WARNING-or-worse log line that reaches
    the root logger becomes ``write(one line of text)``; warnings meant for developers are not
    shown. The usual display comes back afterwards."""

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        write(one_line(message))

    root = logging.getLogger()
    handler = _ToWriter(write)
    root.addHandler(handler)  # with a handler, Python's bare "last resort" printing is off
    try:
        with warnings.catch_warnings():
            for category in DEVELOPER_WARNINGS:
                warnings.simplefilter("ignore", category)
            warnings.showwarning = show
            yield
    finally:
        root.removeHandler(handler)


__all__ = [
    "DEVELOPER_WARNINGS",
    "IMAGE_LOGGERS",
    "Captured",
    "captured",
    "one_line",
    "one_line_messages",
]
