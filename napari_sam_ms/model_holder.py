"""The widgets' models: one choice per widget, one loaded model per choice in the process.

:class:`ModelHolder` keeps one widget's model choice and loads it lazily through
:func:`napari_sam_ms.loader.load_model` (in a worker). Holders with the same choice (and
the same loader) share the loaded model, each with its own predictor (a predictor holds
the image it embedded last): the Prompt, Automatic and Volumes widgets on the same model
hold its weights once in memory and compile and warm up its graphs once (they share its
:class:`~napari_sam_ms.engine.Engine`). The shared model is freed (and its warm-up stopped)
when its last holder chooses another model or is garbage-collected. Tests give a holder a
fake ``loader`` and ``predictor_factory`` instead of patching it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .engine import LOADING, Engine
from .loader import LoadedModel, embedding_id, load_model, make_predictor
from .weights.registry import default_model_type

Loader = Callable[[str | None, str | None], LoadedModel]
PredictorFactory = Callable[[LoadedModel], Any]
Choice = tuple[str | None, str | None]
WARM_UP = {"objects": (1, 2)}  # graphs compiled after loading: one object and several

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldModel:
    """A loaded model with the predictor made for it.

    Args:
        loaded: the loader's record.
        predictor: :func:`napari_sam_ms.loader.make_predictor` of it.
    """

    loaded: LoadedModel
    predictor: Any

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def note(self) -> str:
        return self.loaded.note

    @property
    def model_id(self) -> str:
        """Cache id of this predictor's embeddings."""
        return embedding_id(self.loaded, self.predictor)

    @property
    def persistent(self) -> bool:
        """Its embeddings may be cached on disk (not for random weights)."""
        return not self.loaded.random_weights


class _WarmUp:
    """A warm-up on a daemon thread; stopped (and waited for) at interpreter exit, so a
    process never ends inside a graph compile."""

    _running: ClassVar[set[_WarmUp]] = set()

    def __init__(self, warm_up: Callable[..., int]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(warm_up,), name="napari-sam-ms warm-up", daemon=True
        )
        _WarmUp._running.add(self)
        self._thread.start()

    def _run(self, warm_up: Callable[..., int]) -> None:
        try:
            warm_up(**WARM_UP, stop=self._stop.is_set)
        except Exception:  # a failed warm-up only means the first clicks compile
            logger.warning("warming up the click graphs failed", exc_info=True)
        finally:
            _WarmUp._running.discard(self)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @classmethod
    def stop_all(cls, timeout: float = 60.0) -> None:
        """Stop every warm-up and wait for the graphs being compiled."""
        running = list(cls._running)
        for warm in running:
            warm.stop()
        for warm in running:
            warm.join(timeout)


atexit.register(_WarmUp.stop_all)


@dataclass
class _Shared:
    """One loaded model and the holders using it (their phases follow its engine)."""

    loaded: LoadedModel
    users: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    warm_up: _WarmUp | None = None

    def set_phase(self, phase: str) -> None:
        for holder in list(self.users):
            holder.phase = phase


_SHARED: dict[tuple[Any, Any, Choice], _Shared] = {}
_SHARED_LOCK = threading.RLock()  # held while loading: two widgets never load one choice twice


def _release(key: tuple[Any, Any, Choice], holder_id: int) -> None:
    """A holder stopped using the model of ``key``: the last one frees it."""
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            return
        for holder in list(shared.users):
            if id(holder) == holder_id:  # it chose another model (a dead one is gone already)
                shared.users.discard(holder)
        if any(True for _ in shared.users):  # live ones (len() counts a dying one too)
            return
        del _SHARED[key]
        if shared.warm_up is not None:
            shared.warm_up.stop()


class ModelHolder:
    """One widget's model choice, loaded lazily and kept until the choice changes.

    Args:
        model_type: the chosen type; None: the size stored in ``checkpoint``, else
            :func:`~napari_sam_ms.weights.default_model_type`.
        checkpoint: the chosen file, or None.
        loader: turns (type, checkpoint) into a record (default :func:`load_model`).
        predictor_factory: makes the predictor for a record (default :func:`make_predictor`).
        background_warm_up: compile the click graphs on a background thread after loading
            (the first click does not wait for them: it compiles only what it needs, and
            the warm-up gives way to it); False: before :meth:`get` returns.
    """

    def __init__(
        self,
        model_type: str | None = None,
        checkpoint: str | None = None,
        *,
        loader: Loader = load_model,
        predictor_factory: PredictorFactory = make_predictor,
        background_warm_up: bool = True,
    ) -> None:
        if model_type is None and checkpoint is None:
            model_type = default_model_type()
        self.model_type: str | None = model_type
        self.checkpoint = checkpoint
        self._loader = loader
        self._predictor_factory = predictor_factory
        self._held: HeldModel | None = None
        self._held_for: Choice | None = None
        self._background = background_warm_up
        self._finalizer: weakref.finalize | None = None
        self.phase = ""  # what the model is doing: LOADING or the engine's phases

    @property
    def choice(self) -> Choice:
        """(model type, checkpoint or None)."""
        return self.model_type, self.checkpoint

    def choose(self, model_type: str, checkpoint: str | os.PathLike | None) -> None:
        """Select a model; it is (re)loaded on the next :meth:`get`."""
        self.model_type = model_type
        self.checkpoint = str(checkpoint) if checkpoint else None

    @property
    def is_loaded(self) -> bool:
        return self._held is not None and self._held_for == self.choice

    def _key(self, choice: Choice) -> tuple[Any, Any, Choice]:
        return self._loader, self._predictor_factory, choice

    def get(self) -> HeldModel:
        """The chosen model and its predictor, loading them first if needed (slow); another
        holder's model of the same choice is shared, not loaded again."""
        if self.is_loaded:
            assert self._held is not None
            return self._held
        self._let_go()  # free the old model (unless another holder uses it) before the new
        choice = self.choice
        with _SHARED_LOCK:
            shared = _SHARED.get(self._key(choice))
            if shared is None:
                self.phase = LOADING
                shared = _Shared(self._loader(*choice))
                shared.users.add(self)
                held = HeldModel(shared.loaded, self._predictor_factory(shared.loaded))
                self._start_warm_up(shared, held.predictor)
                _SHARED[self._key(choice)] = shared
            else:
                shared.users.add(self)
                held = HeldModel(shared.loaded, self._predictor_factory(shared.loaded))
        self._held, self._held_for = held, choice
        self._finalizer = weakref.finalize(self, _release, self._key(choice), id(self))
        return held

    def _let_go(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # _release now, once
            self._finalizer = None
        self._held = self._held_for = None

    def _start_warm_up(self, shared: _Shared, predictor: Any) -> None:
        """Follow the engine's phases in every user's :attr:`phase`; compile its click graphs."""
        engine = getattr(predictor, "engine", None)
        if engine is not None:
            engine.on_phase = shared.set_phase
        warm_up = getattr(predictor, "warm_up", None)
        if warm_up is None:
            return
        if not self._background:
            warm_up(**WARM_UP)
            return
        Engine.note_user_activity()  # the user's first call comes next: warm up after it
        shared.warm_up = _WarmUp(warm_up)

    def _shared(self) -> _Shared | None:
        with _SHARED_LOCK:
            return None if self._held_for is None else _SHARED.get(self._key(self._held_for))

    def wait_warm_up(self, timeout: float | None = None) -> bool:
        """Wait for a background warm-up; whether none is running any more."""
        shared = self._shared()
        return shared is None or shared.warm_up is None or shared.warm_up.join(timeout)

    def stop_warm_up(self) -> None:
        """End a background warm-up after its current graph."""
        shared = self._shared()
        if shared is not None and shared.warm_up is not None:
            shared.warm_up.stop()

    def load_fresh(self, choice: Choice | None = None) -> LoadedModel:
        """A new copy of a choice (default: the current one), not kept (e.g. to train it)."""
        return self._loader(*(choice or self.choice))
