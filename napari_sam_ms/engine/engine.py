"""One model's compiled execution: its encoder stage graphs and decoder graphs.

:meth:`Engine.for_model` gives every predictor of a model the same :class:`Engine`, so a
graph compiles once per model and process (the four views of a mirror-averaged predictor,
the whole-image generator and the widgets share them). An engine holds the model's parts,
not the model: it is dropped with the model.

An engine also says what it is doing: :attr:`Engine.on_phase` is called with
:data:`EMBEDDING`, :data:`PREDICTING` or :data:`COMPILING` (a graph is new: first time only)
as work starts, and with the previous phase when a compile ends. :attr:`Engine.lock` lets
one thread at a time run a model: it is one lock for the whole process, as MindSpore's graph
compiler and CPU runtime are shared and two models at once would only split the same cores
(two widgets, or a background warm-up next to a click). A warm-up (:meth:`Engine.busy` with
``wait_for_users``) gives way to callers of any engine between graphs, and starts a graph only
once the user's calls have paused for :data:`USER_IDLE_S`: a user's work is a run of calls
(an embedding of four mirror views, then a click), and a compile slipped in between two of
them would make the user wait for it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import ClassVar

from ..modeling import Sam
from .decoder import DecoderGraphs
from .encoder import encoder_graphs

LOADING = "loading"
COMPILING = "compiling"
EMBEDDING = "embedding"
PREDICTING = "predicting"
PHASES = (LOADING, COMPILING, EMBEDDING, PREDICTING)
USER_IDLE_S = 1.0  # s without a user's call before a warm-up starts compiling a graph


class Engine:
    """The compiled graphs and caches of one model, shared by its predictors.

    Args:
        model: the model whose parts the graphs run.
    """

    _shared: weakref.WeakKeyDictionary[Sam, Engine] = weakref.WeakKeyDictionary()
    lock: ClassVar[threading.RLock] = threading.RLock()  # one for the process (see above)
    _waiting: ClassVar[int] = 0  # callers waiting for the lock (warm-ups give way to them)
    _waiting_lock: ClassVar[threading.Lock] = threading.Lock()
    _last_user: ClassVar[float] = 0.0  # time.monotonic() of the user's latest call
    _thread: ClassVar[threading.local] = threading.local()  # busy() depth per thread

    def __init__(self, model: Sam) -> None:
        self.on_phase: Callable[[str], None] | None = None
        self._phases: list[str] = []
        self.encoder_signatures: set[tuple] = set()  # encoder inputs compiled for
        self._warm_ups = 0  # warm-ups running
        self._local = threading.local()
        compiling = self.compiling
        self.encoder_graphs = encoder_graphs(model.image_encoder, compiling)
        self.decoder_graphs = DecoderGraphs(model.prompt_encoder, model.mask_decoder, compiling)

    @classmethod
    def for_model(cls, model: Sam) -> Engine:
        """The engine shared by all predictors of ``model`` (made on first use)."""
        engine = cls._shared.get(model)
        if engine is None:
            engine = cls._shared[model] = cls(model)
        return engine

    @property
    def compiles(self) -> int:
        """Graphs compiled so far (one per graph and input shape), encoder and decoder."""
        return self.encoder_graphs.compiles + self.decoder_graphs.compiles

    @contextlib.contextmanager
    def warming_up(self) -> Iterator[None]:
        """Mark a warm-up: while it runs, other threads' calls of graphs it has not
        compiled yet run op by op instead of waiting for a compile (:attr:`defers_compiles`)."""
        self._warm_ups += 1
        self._local.warming = True
        try:
            yield
        finally:
            self._local.warming = False
            self._warm_ups -= 1

    @property
    def defers_compiles(self) -> bool:
        """Whether a graph not compiled yet runs op by op on this thread (a warm-up is
        compiling on another one), rather than being compiled on the caller's path."""
        local = self._local
        if getattr(local, "warming", False) or getattr(local, "bulk", False):
            return False
        return self._warm_ups > 0

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Mark this thread's calls as one long job (whole-image mode: hundreds of batches):
        a graph it needs is compiled on its path once rather than run op by op, ten times
        slower, for as long as a warm-up is under way (which waits for the job to pause)."""
        before = getattr(self._local, "bulk", False)
        self._local.bulk = True
        try:
            yield
        finally:
            self._local.bulk = before

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Report ``name`` while the block runs (inside :data:`COMPILING`, compiling stays
        the phase), then the phase before it."""
        if self._phases and self._phases[-1] == COMPILING:
            name = COMPILING
        changed = not self._phases or self._phases[-1] != name
        self._phases.append(name)
        if changed:
            self._report(name)
        try:
            yield
        finally:
            self._phases.pop()
            if changed and self._phases:
                self._report(self._phases[-1])

    def compiling(self) -> contextlib.AbstractContextManager:
        """The phase of a graph's compile (what the graphs enter around a new compile)."""
        return self.phase(COMPILING)

    def _report(self, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(name)

    @classmethod
    def note_user_activity(cls) -> None:
        """The user just did something (a model loaded for them, a call ended): warm-ups
        wait :data:`USER_IDLE_S` from now."""
        cls._last_user = time.monotonic()

    @classmethod
    def users_idle(cls) -> bool:
        """No caller waits for the lock and the last user call ended long enough ago."""
        return not cls._waiting and time.monotonic() - cls._last_user >= USER_IDLE_S

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """Mark this thread's calls as background work (precomputing embeddings): like a
        warm-up's graphs, each waits for the users to pause (:meth:`users_idle`) and is not
        user activity itself."""
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = False

    @contextlib.contextmanager
    def busy(self, name: str, wait_for_users: bool = False) -> Iterator[None]:
        """Hold :attr:`lock` and report ``name`` while the block runs.

        Args:
            wait_for_users: warm-up work: first wait until the users are idle
                (:meth:`users_idle`), and give the lock back if a user came meanwhile
                (also for every call inside :meth:`background`).
        """
        depth = getattr(Engine._thread, "depth", 0)  # busy() blocks this thread is inside
        polite = wait_for_users or getattr(self._local, "background", False)
        user = not polite and not getattr(self._local, "warming", False)
        if depth:  # the lock is this thread's already
            self.lock.acquire()
        elif polite:
            self._acquire_when_idle()
        else:
            with Engine._waiting_lock:
                Engine._waiting += 1
            try:
                self.lock.acquire()
            finally:
                with Engine._waiting_lock:
                    Engine._waiting -= 1
        Engine._thread.depth = depth + 1
        if user:
            Engine.note_user_activity()
        try:
            with self.phase(name):
                yield
        finally:
            Engine._thread.depth = depth
            if user:
                Engine.note_user_activity()
            self.lock.release()

    def _acquire_when_idle(self) -> None:
        while True:
            while not Engine.users_idle():
                time.sleep(0.02)
            self.lock.acquire()
            if Engine.users_idle():
                return
            self.lock.release()  # a user came between the check and the lock


def long_job(predictor: object) -> contextlib.AbstractContextManager:
    """The predictor's :meth:`Engine.bulk` (a predictor without an engine: nothing)."""
    engine = getattr(predictor, "engine", None)
    return engine.bulk() if engine is not None else contextlib.nullcontext()


def background_job(predictor: object) -> contextlib.AbstractContextManager:
    """The predictor's :meth:`Engine.background` (a predictor without an engine: nothing)."""
    engine = getattr(predictor, "engine", None)
    return engine.background() if engine is not None else contextlib.nullcontext()


__all__ = [
    "COMPILING",
    "EMBEDDING",
    "LOADING",
    "PHASES",
    "PREDICTING",
    "Engine",
    "background_job",
    "long_job",
]
