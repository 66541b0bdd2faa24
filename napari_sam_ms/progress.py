"""Progress and cancellation of long work (embedding, whole-image runs, training), no Qt.

Long work takes a progress callback ``progress(done, total)``; when it returns ``False`` the
work stops by raising :class:`Cancelled` (or a subclass naming what stopped). Widgets catch
:class:`Cancelled` by class.
"""

from __future__ import annotations

from collections.abc import Callable

# ``progress(done, total)``; returning False asks the work to stop.
ProgressCallback = Callable[[int, int], "bool | None"]


class Cancelled(RuntimeError):
    """Long work stopped because its caller asked it to (progress callback returned False)."""


class StepCounter:
    """Counts the steps of long work, reports ``(done, total)`` to ``callback`` and raises
    ``cancelled`` ("<what> cancelled after <done> of <total> <unit>") when it returns False."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        total: int,
        cancelled: type[Cancelled] = Cancelled,
        what: str = "work",
        unit: str = "steps",
    ) -> None:
        self.callback, self.total, self.done = callback, total, 0
        self.cancelled, self.what, self.unit = cancelled, what, unit

    def report(self) -> None:
        """Report the count; raise ``cancelled`` if the callback returns False."""
        if self.callback is not None and self.callback(self.done, self.total) is False:
            raise self.cancelled(
                f"{self.what} cancelled after {self.done} of {self.total} {self.unit}"
            )

    def step(self) -> None:
        """One more step done: count and report it."""
        self.done += 1
        self.report()


__all__ = ["Cancelled", "ProgressCallback", "StepCounter"]
