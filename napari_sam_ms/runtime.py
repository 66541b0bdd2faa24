"""Where and how MindSpore runs: device choice, CPU threads and graph compilation.

The device is a setting: ``configure(device="GPU")`` or the environment variable
``NAPARI_SAM_MS_DEVICE`` (``CPU``, ``GPU`` or ``Ascend``; ``NAPARI_SAM_MS_DEVICE_ID`` picks the
card). Nothing here assumes a CPU beyond the CPU-only thread setting.
"""

from __future__ import annotations

import os

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
        else:
            ms.set_device(target, device_id)
        _state["device"] = target
    return target


def jit_default() -> bool:
    """Whether new models run compiled: ``NAPARI_SAM_MS_JIT`` (1/0), default off.

    Off by default: with one graph per encoder block, vit_b's twelve graphs each keep their
    own working memory and together exceed 16 GB.
    """
    return os.environ.get("NAPARI_SAM_MS_JIT", "0").strip().lower() in ("1", "true", "yes")


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
