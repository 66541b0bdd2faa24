"""The model a batch task uses, loaded once per process and never pickled into tasks.

A task carries a :class:`ModelSpec` (a registry name and/or a checkpoint path with its
sha256), a few hundred bytes. :func:`worker_model` turns it into a
:class:`~napari_sam_ms.loader.LoadedModel`, loading it on the first call in a process and
reusing it afterwards. :class:`ModelPlugin`, registered on a ``distributed.Client``, makes
each worker choose its device and CPU threads and load the model when it starts, before
its first task, so that the tasks' timings do not include loading.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..loader import LoadedModel

_LOCK = threading.Lock()
_MODELS: dict[ModelSpec, LoadedModel] = {}
_LOADS: dict[ModelSpec, int] = {}  # how many times each spec was loaded in this process


class ModelMismatchError(ValueError):
    """A worker's checkpoint file is not the one the client chose (another sha256)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model a task needs, small enough to send with every task.

    Args:
        model: a registry name or size (``micro``, ``vit_b``, ``vit_b_lm``...), or None.
        checkpoint: a weights file every worker can read at this path, or None.
        sha256: the checkpoint's sha256 as the client read it; a worker whose file differs
            refuses to load it. None: not checked (registry weights are checked by pooch).
        device: ``CPU``, ``GPU`` or ``Ascend``; None: the settings' device.
        cpu_threads: MindSpore's operator threads in each worker process; None: the cores
            the process may use.
    """

    model: str | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    device: str | None = None
    cpu_threads: int | None = None

    @classmethod
    def from_choice(
        cls,
        model: str | None,
        checkpoint: str | os.PathLike | None,
        device: str | None = None,
        cpu_threads: int | None = None,
    ) -> ModelSpec:
        """A spec for ``(model, checkpoint)``, with the checkpoint's path made absolute and
        its sha256 read here (the client), so that workers can check theirs."""
        from ..weights import sha256_of

        if checkpoint is None:
            return cls(model, None, None, device, cpu_threads)
        path = Path(checkpoint).expanduser().resolve()
        digest = sha256_of(path) if path.is_file() else None  # a missing file: the loader says
        return cls(model, str(path), digest, device, cpu_threads)

    def load(self, worker: Any = None) -> LoadedModel:
        """Choose the device (once per process) and load the model (not cached). Without
        ``cpu_threads``, a Dask worker's MindSpore threads are its threads (its share of the
        machine's cores; ``worker`` or the worker running this task), not every core."""
        from .. import runtime
        from ..loader import load_model

        threads = self.cpu_threads or dask_worker_threads(worker)
        runtime.configure(device=self.device, cpu_threads=threads)
        loaded = load_model(self.model, self.checkpoint)
        if self.sha256 is not None and loaded.checkpoint_sha256 != self.sha256:
            raise ModelMismatchError(
                f"{self.checkpoint} on this worker differs from the client's file (sha256 "
                f"{loaded.checkpoint_sha256[:12]}... instead of {self.sha256[:12]}...): give "
                "every worker the same file, or a registry name"
            )
        return loaded


def dask_worker_threads(worker: Any = None) -> int | None:
    """The threads of ``worker``, or of the Dask worker running this code (None outside
    one). ``dask worker --nworkers N`` gives each process cores // N threads."""
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):  # not in a Dask worker
            return None
    return max(1, int(worker.state.nthreads))


def worker_model(spec: ModelSpec, worker: Any = None) -> LoadedModel:
    """The model of ``spec`` in this process: loaded on the first call, then reused."""
    with _LOCK:
        loaded = _MODELS.get(spec)
        if loaded is None:
            loaded = _MODELS[spec] = spec.load(worker)
            _LOADS[spec] = _LOADS.get(spec, 0) + 1
        return loaded


def loaded_specs() -> list[ModelSpec]:
    """The specs whose models this process holds (for tests and diagnostics)."""
    with _LOCK:
        return list(_MODELS)


def load_count(spec: ModelSpec) -> int:
    """How many times this process loaded the model of ``spec`` (1 once loaded: it is kept)."""
    with _LOCK:
        return _LOADS.get(spec, 0)


def _plugin_base() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class ModelPlugin(_plugin_base()):  # type: ignore[misc]
    """Loads the model of ``spec`` when a worker starts (and on workers that join later).

    Register it with ``client.register_plugin(ModelPlugin(spec))``; tasks then call
    :func:`worker_model` with the same spec and get the loaded model without waiting.
    """

    name = "napari-sam-ms-model"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def setup(self, worker: Any) -> None:
        """Load the model in the worker process (errors surface in the first task)."""
        try:
            worker_model(self.spec, worker)
        except Exception as exc:  # the task will raise it again, with the item it was for
            worker.log_event("napari-sam-ms", {"model_load_error": str(exc)})


def pin_process(cores: tuple[int, ...]) -> None:
    """Keep every thread of this process (and the threads they start) on ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


class CorePlugin(_plugin_base()):  # type: ignore[misc]
    """Pins worker ``name`` of a local cluster to ``core_sets[name]`` when it starts (also a
    worker the nanny restarted): given to the workers when the cluster starts
    (:func:`~napari_sam_ms.batch.cluster.local_cluster`), so that the model's threads start
    on the worker's own cores."""

    name = "napari-sam-ms-cores"

    def __init__(self, core_sets: list[tuple[int, ...]]) -> None:
        self.core_sets = core_sets

    def setup(self, worker: Any) -> None:
        """Pin this worker's process; a worker without a numbered name is left as it is."""
        if isinstance(worker.name, int) and 0 <= worker.name < len(self.core_sets):
            pin_process(self.core_sets[worker.name])
