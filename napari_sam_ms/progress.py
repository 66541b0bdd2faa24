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


__all__ = ["Cancelled", "ProgressCallback"]
