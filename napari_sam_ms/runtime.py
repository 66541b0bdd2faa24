"""Where and how MindSpore runs: device choice, CPU threads and graph compilation.

The device is a setting: ``configure(device="GPU")`` or the environment variable
``NAPARI_SAM_MS_DEVICE`` (``CPU``, ``GPU`` or ``Ascend``; ``NAPARI_SAM_MS_DEVICE_ID`` picks the
card). Nothing here assumes a CPU beyond the CPU-only settings below.

On CPU, :func:`configure` also makes op-by-op (PyNative) execution synchronous
(``mindspore.runtime.launch_blocking``): MindSpore's asynchronous launch queue otherwise leaves
the operator kernels effectively one core, and a vit_b encoder block runs about twice as slow
(measured: global block 4.9 s -> 2.4 s, windowed block 1.55 s -> 0.85 s). With it, the host
side of each launch runs in the calling thread too (``MS_DEV_HOST_BLOCKING_RUN=1``, unless set
otherwise): MindSpore's ``frontend_queue`` thread otherwise busy-waits next to the two kernel
threads on a small machine (measured, vit_b on 2 cores, alternating runs: click median ~29 vs
29-36 ms, whole image ~5 % faster, encoder unchanged). Switch both off with
``NAPARI_SAM_MS_LAUNCH_BLOCKING=0``. GPU and Ascend keep MindSpore's asynchronous default.

Environment variables:

- ``NAPARI_SAM_MS_DEVICE`` / ``NAPARI_SAM_MS_DEVICE_ID``: device and card (see :func:`configure`).
- ``NAPARI_SAM_MS_LAUNCH_BLOCKING``: 1 (default) / 0, synchronous kernel launch and host side
  on CPU.
- ``NAPARI_SAM_MS_JIT``: 1 / 0 (default), compile SAM's parts (see :func:`jit_default`).
- ``NAPARI_SAM_MS_ENCODER_GRAPHS``: 1 / 0, the predictor's image encoder as shared compiled
  block graphs (default: on for CPU; :func:`encoder_graphs_default`).
- ``NAPARI_SAM_MS_DECODER_GRAPHS``: 1 / 0, the predictor's prompt encoder + mask decoder as
  compiled graphs (default: on for CPU; :func:`decoder_graphs_default`).
- ``NAPARI_SAM_MS_DECODE_CHUNK``: prompts run through the decoder's transformer at once
  (default 4; memory vs speed), see :meth:`napari_sam_ms.SamPredictor.decode_selected`.
- ``NAPARI_SAM_MS_GRAPH_KERNEL``: 1 (default) / 0, graph kernel fusion while the encoder
  graphs and the mask decoder's graphs compile on CPU (:func:`fused_compile`).
- ``NAPARI_SAM_MS_STAGE_BLOCKS``: most encoder blocks compiled into one graph (default 3),
  see ``modeling.image_encoder.BlockGraphs``.
- ``NAPARI_SAM_MS_ATTN_CHUNK_MB``: memory budget of one chunk of global attention heads
  (default 64: one vit_b head; 0 = all heads at once), see
  ``modeling.image_encoder.attention_chunk``.
- ``OMP_WAIT_POLICY``: set to ``PASSIVE`` by ``import napari_sam_ms`` unless already set
  (not here: libgomp reads it when MindSpore loads it, before :func:`configure` can run).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import threading

import mindspore as ms

_DEVICES = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}
_state: dict[str, object] = {"device": None}


def configure(
    device: str | None = None,
    device_id: int | None = None,
    cpu_threads: int | None = None,
) -> str:
    """Choose the MindSpore device once per process and return its name.

    Args:
        device: ``CPU``, ``GPU`` or ``Ascend`` (any case). Default: ``NAPARI_SAM_MS_DEVICE``
            or CPU.
        device_id: card index for GPU/Ascend. Default: ``NAPARI_SAM_MS_DEVICE_ID`` or 0.
        cpu_threads: operator threads on CPU. Default: the cores this process may use
            (MindSpore's own default of 25 threads is slower on small machines).
    """
    if _state["device"] is not None and device is None:
        return str(_state["device"])
    name = device or os.environ.get("NAPARI_SAM_MS_DEVICE") or "CPU"
    target = _DEVICES.get(name.lower())
    if target is None:
        raise ValueError(f"unknown device {name!r}: use one of CPU, GPU, Ascend")
    if _state["device"] is not None and _state["device"] != target:
        raise RuntimeError(
            f"MindSpore already runs on {_state['device']} in this process; restart to use {target}"
        )
    if _state["device"] is None:
        if device_id is None:
            device_id = int(os.environ.get("NAPARI_SAM_MS_DEVICE_ID", "0"))
        if target == "CPU":
            ms.set_device("CPU")
            threads = cpu_threads or len(os.sched_getaffinity(0))
            ms.device_context.cpu.op_tuning.threads_num(max(1, threads))
            if _env_flag("NAPARI_SAM_MS_LAUNCH_BLOCKING", True):
                ms.runtime.launch_blocking()
                # read when MindSpore first launches; no frontend_queue thread (see above)
                os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
        else:
            ms.set_device(target, device_id)
        _state["device"] = target
    return target


def jit_default() -> bool:
    """Whether new models run compiled: ``NAPARI_SAM_MS_JIT`` (1/0), default off.

    Off by default: with one graph per encoder block, vit_b's twelve graphs each keep their
    own working memory and together exceed 16 GB.
    """
    return _env_flag("NAPARI_SAM_MS_JIT", False)


def _env_flag(name: str, default: bool) -> bool:
    """A boolean environment switch: 1/true/yes or 0/false/no; unset or empty: ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


_FUSION_LOCK = threading.Lock()


def fusion_available() -> bool:
    """Whether :func:`fused_compile` fuses: on CPU, unless ``NAPARI_SAM_MS_GRAPH_KERNEL=0``
    or the ``decorator`` package (needed by MindSpore's fusion compiler) is missing."""
    return (
        configure() == "CPU"
        and _env_flag("NAPARI_SAM_MS_GRAPH_KERNEL", True)
        and importlib.util.find_spec("decorator") is not None
    )


@contextlib.contextmanager
def fused_compile():
    """Compile the graphs first called inside this block with graph kernel fusion (CPU).

    Fusion (``enable_graph_kernel``) makes vit_b's compiled encoder blocks ~25 % faster and
    their working memory smaller; graphs keep their fused kernels after the block ends, and
    the global setting is restored, so other graphs (e.g. training) are not affected. Off on
    GPU/Ascend, when the ``decorator`` package (needed by MindSpore's fusion compiler) is
    missing, or with ``NAPARI_SAM_MS_GRAPH_KERNEL=0``. Fused kernels are cached under
    ``MS_COMPILER_CACHE_PATH`` (default: a folder in the system's temporary directory).
    """
    if not fusion_available():
        yield
        return
    os.environ.setdefault(
        "MS_COMPILER_CACHE_PATH", os.path.join(tempfile.gettempdir(), "napari-sam-ms-kernels")
    )
    with _FUSION_LOCK:
        before = ms.get_context("enable_graph_kernel")
        ms.set_context(enable_graph_kernel=True)
        try:
            yield
        finally:
            ms.set_context(enable_graph_kernel=before)


class FusedGraph:
    """``ms.jit(fn)`` whose compiles (one per input signature: shapes and plain values) run
    inside :func:`fused_compile`; later calls of a signature run the compiled graph."""

    def __init__(self, fn) -> None:
        self.fn = ms.jit(fn)
        self.signatures: set[tuple] = set()

    def __call__(self, *args):
        signature = tuple(tuple(a.shape) if isinstance(a, ms.Tensor) else a for a in args)
        if signature in self.signatures:
            return self.fn(*args)
        with fused_compile():
            out = self.fn(*args)
        self.signatures.add(signature)
        return out


def encoder_graphs_default() -> bool:
    """Whether the predictor runs the image encoder as shared compiled block graphs
    (:meth:`napari_sam_ms.modeling.ImageEncoderViT.run_graphs`): ``NAPARI_SAM_MS_ENCODER_GRAPHS``
    (1/0), default on for CPU, off on GPU/Ascend (not measured there)."""
    return _env_flag("NAPARI_SAM_MS_ENCODER_GRAPHS", configure() == "CPU")


def decoder_graphs_default() -> bool:
    """Whether predictors run the prompt encoder + mask decoder as compiled graphs (one per
    prompt kind and shape, compiled on first use; the mask decoder's with graph kernel
    fusion, the prompt encoder's without: fused, MindSpore 2.10 computes it wrongly on CPU):
    ``NAPARI_SAM_MS_DECODER_GRAPHS`` (1/0), default on for CPU, off on GPU/Ascend."""
    return _env_flag("NAPARI_SAM_MS_DECODER_GRAPHS", configure() == "CPU")


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
    cells = [*enc.blocks, enc.neck, sam.prompt_encoder, sam.mask_decoder]
    for cell in cells:
        if "construct" in vars(cell):
            del cell.construct  # drop an earlier compiled wrapper
        if enable:
            cell.construct = ms.jit(cell.construct)
    sam.jit_compiled = enable
    return sam
