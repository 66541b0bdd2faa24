"""Where and how MindSpore runs: device choice, CPU threads and graph compilation.

The device is a setting (:mod:`napari_sam_ms.settings`: ``NAPARI_SAM_MS_DEVICE``, or
``configure(device="GPU")``). Nothing here assumes a CPU beyond the CPU-only settings below.
On CPU, :func:`configure` makes op-by-op execution synchronous
(``mindspore.runtime.launch_blocking``) with MindSpore's host side in the calling thread
(``MS_DEV_HOST_BLOCKING_RUN=1`` unless set; see ``docs/performance.md``). GPU and Ascend
keep MindSpore's asynchronous default.
``OMP_WAIT_POLICY`` is set by ``import napari_sam_ms``, not here: libgomp reads it when
MindSpore loads it, before :func:`configure` can run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import mindspore as ms

from . import settings as _settings
from .settings import Settings

_DEVICES = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}
_state: dict[str, object] = {"device": None}


def configure(
    device: str | None = None,
    device_id: int | None = None,
    cpu_threads: int | None = None,
) -> str:
    """Choose the MindSpore device once per process and return its name.

    Args:
        device: ``CPU``, ``GPU`` or ``Ascend`` (any case). Default: ``Settings.device``.
        device_id: card index for GPU/Ascend. Default: ``Settings.device_id``.
        cpu_threads: operator threads on CPU. Default: the cores this process may use
            (MindSpore's own default of 25 threads is slower on small machines).
    """
    if _state["device"] is not None and device is None:
        return str(_state["device"])
    config = _settings.current()
    name = device or config.device
    target = _DEVICES.get(name.lower())
    if target is None:
        raise ValueError(f"unknown device {name!r}: use one of CPU, GPU, Ascend")
    if _state["device"] is not None and _state["device"] != target:
        raise RuntimeError(
            f"MindSpore already runs on {_state['device']} in this process; restart to use {target}"
        )
    if _state["device"] is None:
        _use_compile_cache(config)
        if device_id is None:
            device_id = config.device_id
        if target == "CPU":
            ms.set_device("CPU")
            threads = max(1, cpu_threads or len(os.sched_getaffinity(0)))
            ms.device_context.cpu.op_tuning.threads_num(threads)
            _state["cpu_threads"] = threads
            if config.launch_blocking:
                ms.runtime.launch_blocking()
                # read when MindSpore first launches; no frontend_queue thread (see above)
                os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
        else:
            ms.set_device(target, device_id)
        _state["device"] = target
    return target


_OFF = {"off", "0", "false", "no", "none"}


def compile_cache_dir(settings: Settings | None = None) -> Path | None:
    """``Settings.compile_cache``, or ``pooch.os_cache("napari-sam-ms")/compile``; None
    when it is ``off``."""
    chosen = (settings or _settings.current()).compile_cache
    if chosen and chosen.strip().lower() in _OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam-ms")) / "compile"


def _use_compile_cache(settings: Settings) -> None:
    """Keep MindSpore's compiled kernels in :func:`compile_cache_dir` (unless the process
    chose its own ``MS_COMPILER_CACHE_PATH``), so that a later process reuses them."""
    folder = compile_cache_dir(settings)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MS_COMPILER_CACHE_PATH", str(folder))


def jit_default(settings: Settings | None = None) -> bool:
    """Whether new models run compiled part by part (``Settings.jit``, default off: one graph
    per encoder block needs more memory than a laptop has for vit_b)."""
    return (settings or _settings.current()).jit


_FUSION_LOCK = threading.Lock()


def fusion_available(settings: Settings | None = None) -> bool:
    """Whether :func:`fused_compile` fuses: on CPU, unless ``Settings.graph_kernel`` is off
    or the ``decorator`` package (needed by MindSpore's fusion compiler) is missing."""
    return (
        configure() == "CPU"
        and (settings or _settings.current()).graph_kernel
        and importlib.util.find_spec("decorator") is not None
    )


@contextlib.contextmanager
def fused_compile(settings: Settings | None = None):
    """Compile the graphs first called inside this block with graph kernel fusion (CPU).

    Graphs keep their fused kernels after the block ends, and the global setting is
    restored, so other graphs (e.g. training) are not affected. Off where
    :func:`fusion_available` says so. Fused kernels are cached under
    ``MS_COMPILER_CACHE_PATH`` (default: a folder in the system's temporary directory).
    """
    if not fusion_available(settings):
        yield
        return
    with _graph_kernel_on():
        yield


@contextlib.contextmanager
def _graph_kernel_on():
    os.environ.setdefault(
        "MS_COMPILER_CACHE_PATH", os.path.join(tempfile.gettempdir(), "napari-sam-ms-kernels")
    )
    with _FUSION_LOCK:
        before = ms.get_context("enable_graph_kernel")
        folder = os.getcwd()
        logs = {n for n in _AKG_LOG_NAMES if os.path.exists(os.path.join(folder, n))}
        ms.set_context(enable_graph_kernel=True)
        try:
            yield
        finally:
            ms.set_context(enable_graph_kernel=before)
            _akg_logs_moved(folder, logs)


AKG_LOGS = "akg_logs"  # under MS_COMPILER_CACHE_PATH
# AKG, the compiler of fused kernels, runs in a server process MindSpore starts in the
# current folder (the one napari was started from) and writes these logs there.
_AKG_LOG_NAMES = ("dsa_transfrom.log", "scalar_transform.log")


def _akg_logs_moved(folder: str, before: set[str]) -> None:
    """Move the AKG logs that appeared in ``folder`` (not in ``before``) to
    :data:`AKG_LOGS` under the kernel cache: no stray file in the user's folder."""
    cache = os.environ.get("MS_COMPILER_CACHE_PATH", "")
    for name in _AKG_LOG_NAMES:
        path = os.path.join(folder, name)
        if name in before or not os.path.isfile(path) or not cache:
            continue
        target = os.path.join(os.path.abspath(cache), AKG_LOGS)
        try:
            os.makedirs(target, exist_ok=True)
            shutil.move(path, os.path.join(target, name))
        except OSError:  # unwritable cache: leave it rather than fail a compile
            pass


class FusedGraph:
    """``ms.jit(fn)`` whose compiles (one per input signature: shapes, dtypes and plain
    values) run with graph kernel fusion when ``fuse`` (callers pass
    :func:`fusion_available`); later calls of a signature run the compiled graph.

    Args:
        fn: the function of Tensors.
        fuse: compile with graph kernel fusion.
        compiling: a context manager factory entered around each compile (e.g. to report
            it); :attr:`signatures` holds the signatures compiled so far.
    """

    def __init__(
        self,
        fn: Callable,
        fuse: bool = True,
        compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.fn = ms.jit(fn)
        self.fuse = fuse
        self.compiling = compiling
        self.signatures: set[tuple] = set()

    def is_compiled(self, *args) -> bool:
        """Whether a call with ``args`` runs an already compiled graph."""
        return signature(args) in self.signatures

    def __call__(self, *args):
        key = signature(args)
        if key in self.signatures:
            return self.fn(*args)
        with self.compiling():
            if self.fuse:
                with _graph_kernel_on():
                    out = self.fn(*args)
            else:
                out = self.fn(*args)
        self.signatures.add(key)
        return out


def signature(args: tuple) -> tuple:
    """What ``ms.jit`` compiles a graph for: shapes and dtypes of Tensors, other values."""
    return tuple((tuple(a.shape), str(a.dtype)) if isinstance(a, ms.Tensor) else a for a in args)


def encoder_graphs_default(settings: Settings | None = None) -> bool:
    """Whether the predictor runs the image encoder as shared compiled stage graphs
    (``Settings.encoder_graphs``; unset: on for CPU, off on GPU/Ascend, not measured there)."""
    chosen = (settings or _settings.current()).encoder_graphs
    return configure() == "CPU" if chosen is None else chosen


def decoder_graphs_default(settings: Settings | None = None) -> bool:
    """Whether predictors run the prompt encoder + mask decoder as compiled graphs
    (``Settings.decoder_graphs``; unset: on for CPU, off on GPU/Ascend)."""
    chosen = (settings or _settings.current()).decoder_graphs
    return configure() == "CPU" if chosen is None else chosen


def cpu_threads() -> int | None:
    """MindSpore's operator threads chosen by :func:`configure` (None: not on CPU yet)."""
    value = _state.get("cpu_threads")
    return None if value is None else int(value)


def device() -> str:
    """The configured device (configuring the default if nothing was chosen yet)."""
    return configure()


def compile_model(sam, enable: bool = True):
    """Run SAM's parts as compiled MindSpore graphs (``ms.jit``) instead of op by op.

    Each encoder block, the neck, the prompt encoder and the mask decoder become one graph
    each. One graph spanning all encoder blocks is avoided on purpose: compiling it needs
    more memory than a laptop has. Results are the same as PyNative execution; the first
    call of each part compiles (seconds), later calls reuse the graph.

    Args:
        sam: the model (changed in place and returned).
        enable: False restores op-by-op (PyNative) execution.
    """
    enc = sam.image_encoder
    # Meta's ViT: each block; MobileSAM's TinyViT: its stem and each stage
    parts = list(enc.blocks) if hasattr(enc, "blocks") else [enc.patch_embed, *enc.layers]
    cells = [*parts, enc.neck, sam.prompt_encoder, sam.mask_decoder]
    for cell in cells:
        if "construct" in vars(cell):
            del cell.construct  # drop an earlier compiled wrapper
        if enable:
            cell.construct = ms.jit(cell.construct)
    sam.jit_compiled = enable
    return sam
