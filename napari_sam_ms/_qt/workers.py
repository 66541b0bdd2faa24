"""Run model work off the UI thread, one job at a time, with progress and cancel.

A :class:`TaskRunner` belongs to a widget. ``submit(job, ...)`` runs ``job(report)`` in a
napari thread worker; ``report(done, total)`` updates a napari progress bar and returns False
once the job should stop; the job then raises :class:`napari_sam_ms.progress.Cancelled` (or a
subclass), caught here by class. A request made while a job runs cancels that job and waits
for it to end; only the newest waiting request runs next, so two jobs never use the model at
once and stale results are never shown.

``Settings.sync`` (``NAPARI_SAM_MS_SYNC=1``) runs jobs inline on the calling thread (tests,
debugging), as stardist-napari does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_sam_ms.progress import Cancelled
from napari_sam_ms.settings import current

Report = Callable[[int, int], bool]
Job = Callable[[Report], Any]


def sync_mode() -> bool:
    """True when the settings ask for inline (threadless) execution."""
    return current().sync


@dataclass
class _Task:
    job: Job
    on_done: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None
    on_cancel: Callable[[], None] | None
    desc: str
    ident: int
    stop: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    returned: bool = False
    superseded: bool = False  # stopped by a newer request: no callbacks at all


class _Relay(QObject):
    """Carries progress from the worker thread to the UI thread (queued signal)."""

    progressed = Signal(int, int, int)


class TaskRunner:
    """One-at-a-time job runner owned by a widget.

    Args:
        on_busy: called with True when a job starts and False when the runner is idle.
    """

    def __init__(self, on_busy: Callable[[bool], None] | None = None) -> None:
        self.on_busy = on_busy
        self._current: _Task | None = None
        self._pending: _Task | None = None
        self._worker = None
        self._pbar = None
        self._count = 0
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

    @property
    def busy(self) -> bool:
        """A job is running or waiting."""
        return self._current is not None or self._pending is not None

    @property
    def current_desc(self) -> str:
        return "" if self._current is None else self._current.desc

    def submit(
        self,
        job: Job,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
        desc: str = "SAM",
    ) -> None:
        """Run ``job`` now, or after the running job (which is asked to stop)."""
        self._count += 1
        task = _Task(job, on_done, on_error, on_cancel, desc, self._count)
        if self._current is not None:
            self._current.superseded = True
            self._current.stop.set()
            if self._worker is not None:
                self._worker.quit()
            self._pending = task  # replaces an older waiting request
            return
        self._start(task)

    def cancel(self) -> None:
        """Stop the running job and drop the waiting one (their on_cancel is called)."""
        dropped, self._pending = self._pending, None
        if dropped is not None and dropped.on_cancel is not None:
            dropped.on_cancel()
        if self._current is not None:
            self._current.superseded = False
            self._current.stop.set()
            if self._worker is not None:
                self._worker.quit()

    def shutdown(self) -> None:
        """Cancel everything and call back nothing any more (the owner is gone)."""
        self.on_busy = None
        for task in (self._current, self._pending):
            if task is not None:
                task.on_done = task.on_error = task.on_cancel = None
        self.cancel()

    # ---------------------------------------------------------------- running
    def _start(self, task: _Task) -> None:
        self._current = task
        if self.on_busy is not None:
            self.on_busy(True)
        if sync_mode():
            self._run_inline(task)
            return
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._pbar = progress(total=0, desc=task.desc)
        # Exceptions come back as values (see _guarded): nothing is re-raised in Qt's loop.
        worker = create_worker(self._guarded, task, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda outcome, t=task: self._on_outcome(t, outcome))
        worker.finished.connect(lambda t=task: self._finish(t))
        self._worker = worker
        worker.start()

    def _run_inline(self, task: _Task) -> None:
        self._on_outcome(task, self._guarded(task))
        self._finish(task)

    def _guarded(self, task: _Task) -> tuple[bool, Any]:
        """(True, result) or (False, exception): errors reach on_error, not the event loop."""
        try:
            return True, self._call(task)
        except Exception as exc:
            return False, exc

    def _call(self, task: _Task) -> Any:
        def report(done: int, total: int) -> bool:
            self._relay.progressed.emit(task.ident, int(done), int(total))
            return not task.stop.is_set()

        if task.stop.is_set():
            raise Cancelled()
        return task.job(report)

    def _on_outcome(self, task: _Task, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            task.result, task.returned = value, True
        else:
            task.error = value

    def _on_progress(self, ident: int, done: int, total: int) -> None:
        if self._pbar is None or self._current is None or self._current.ident != ident:
            return
        if total > 0 and self._pbar.total != total:
            self._pbar.total = total
        if done > self._pbar.n:
            self._pbar.update(done - self._pbar.n)

    def _finish(self, task: _Task) -> None:
        if self._current is not task:
            return
        self._current, self._worker = None, None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        cancelled = task.stop.is_set() or isinstance(task.error, Cancelled)
        try:
            if task.superseded:
                pass
            elif cancelled:
                if task.on_cancel is not None:
                    task.on_cancel()
            elif task.error is not None:
                if task.on_error is not None:
                    task.on_error(task.error)
            elif task.returned and task.on_done is not None:
                task.on_done(task.result)
        finally:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._start(pending)
            elif self._current is None and self.on_busy is not None:
                self.on_busy(False)


__all__ = ["Job", "Report", "TaskRunner", "sync_mode"]
