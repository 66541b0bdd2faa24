"""SAM-family checkpoint layouts: which one a ``.pth`` holds, and its SAM state dict.

Recognised by content (never by file name), all read by the torch-free :mod:`.pth_reader`:

- Meta's plain state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``),
  also nested under ``model``/``state_dict``/... or with DataParallel's ``module.`` prefix;
- MobileSAM's ``mobile_sam.pt``: a plain state dict whose encoder is TinyViT
  (``image_encoder.layers.*``). TinyViT's classification head, which SAM never runs
  (``image_encoder.norm_head.*``, ``image_encoder.head.*``), is dropped; nothing else is;
- micro-sam's models: a plain state dict, or ``{"model_state": ..., "decoder_state": ...}``
  (its exported models and training checkpoints) whose ``model_state`` keys may carry the
  ``sam.`` prefix of its trainer. ``decoder_state``, micro-sam's instance-segmentation
  decoder, is not used: :data:`DECODER_NOTE` is logged once per read.

Anything else raises a ValueError saying what the file holds and what to use instead.
Keys and shapes are checked afterwards, strictly, against the model (:mod:`.checkpoint`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pth_reader import is_state_dict, load_pth, unwrap_state_dict

PathLike = str | os.PathLike

logger = logging.getLogger(__name__)

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
TINYVIT_STAGES = "image_encoder.layers."  # TinyViT's stages; Meta's ViT has ``blocks``
TINYVIT_HEAD = tuple(
    f"image_encoder.{part}.{p}" for part in ("norm_head", "head") for p in ("weight", "bias")
)
MICRO_SAM_PREFIX = "sam."  # micro-sam's trainer wraps SAM as ``.sam``
DECODER_NOTE = (
    "this checkpoint also holds micro-sam's instance-segmentation decoder, which "
    "napari-sam-ms does not use yet"
)
WHAT_TO_USE = (
    "use a SAM checkpoint: Meta's sam_vit_*.pth, MobileSAM's mobile_sam.pt, a micro-sam model "
    "file (e.g. vit_b_lm's vit_b.pt, not its *_decoder.pt), or a .ckpt written by napari-sam-ms"
)

# Meta's non-persistent buffers; accepted (and dropped) if a checkpoint carries them.
PIXEL_BUFFERS = {
    "pixel_mean": (123.675, 116.28, 103.53),
    "pixel_std": (58.395, 57.12, 57.375),
}


@dataclass(frozen=True)
class SamCheckpoint:
    """A SAM state dict read from a ``.pth`` and what it came in.

    Args:
        state: ``name -> float32 array`` (integer buffers keep their dtype), SAM's names.
        layout: ``"SAM state dict"``, ``"micro-sam model"``, ... plus ``" (TinyViT encoder)"``.
        notes: lines for the user (e.g. :data:`DECODER_NOTE`).
    """

    state: dict[str, np.ndarray]
    layout: str
    notes: tuple[str, ...] = ()


def sam_checkpoint_from(obj: Any, source: str) -> SamCheckpoint:
    """The SAM state dict in an unpickled checkpoint (``source`` names it in errors).

    Raises:
        ValueError: no SAM state dict in ``obj`` (the message says what it holds), or pixel
            buffers other than SAM's.
    """
    notes: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state"), Mapping):
        layout = "micro-sam model"
        state = _strip_prefix(obj["model_state"], MICRO_SAM_PREFIX)
        if not is_state_dict(state):
            raise ValueError(f"{source}: its model_state {_describe(state)}; {WHAT_TO_USE}")
        if obj.get("decoder_state"):
            notes.append(DECODER_NOTE)
    else:
        layout = "SAM state dict"
        found = unwrap_state_dict(obj)
        if found is None:
            raise ValueError(_not_sam(source, obj))
        state = found
    if not any(k.startswith(SAM_PARTS) for k in state):
        raise ValueError(_not_sam(source, state))
    if any(k.startswith(TINYVIT_STAGES) for k in state):
        layout += " (TinyViT encoder)"
        state = {k: v for k, v in state.items() if k not in TINYVIT_HEAD}
    _check_pixel_buffers(state, source)
    return SamCheckpoint({k: _as_float32(v) for k, v in state.items()}, layout, tuple(notes))


def read_sam_checkpoint(path: PathLike) -> SamCheckpoint:
    """Read any supported ``.pth`` layout (module docstring) without torch."""
    return sam_checkpoint_from(load_pth(path), str(path))


def read_sam_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """The SAM state dict of a ``.pth`` in any supported layout; its notes are logged."""
    found = read_sam_checkpoint(path)
    for note in found.notes:
        logger.warning("%s: %s", path, note)
    return found.state


# --------------------------------------------------------------------- helpers


def _strip_prefix(state: Mapping[Any, Any], prefix: str) -> dict[Any, Any]:
    """Keys without ``prefix`` where they have it (micro-sam does the same)."""
    return {
        (k[len(prefix) :] if isinstance(k, str) and k.startswith(prefix) else k): v
        for k, v in state.items()
    }


def _not_sam(source: str, obj: Any) -> str:
    return f"{source} {_describe(obj)}: it is not a SAM checkpoint; {WHAT_TO_USE}"


def _describe(obj: Any) -> str:
    """What an unpickled object is, in a few words, for error messages."""
    if isinstance(obj, np.ndarray):
        return f"holds a single tensor of shape {tuple(obj.shape)}"
    if not isinstance(obj, Mapping):
        return f"holds a {type(obj).__name__}, not a dict of weights"
    if not obj:
        return "holds an empty dict"
    keys = [str(k) for k in obj]
    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    if not is_state_dict(obj):
        return f"holds a dict ({shown}) with no state dict of SAM weights"
    text = f"holds {len(keys)} tensors ({shown}) but none of SAM's image_encoder.*, " + (
        "prompt_encoder.*, mask_decoder.*"
    )
    return text + _guess(keys)


def _guess(keys: list[str]) -> str:
    """A hint at what network a non-SAM state dict belongs to."""
    if any(k.startswith("decoder.") for k in keys):
        return "; it looks like a decoder alone, such as micro-sam's *_decoder.pt"
    heads = ("fc.weight", "head.weight", "classifier.weight", "classifier.1.weight")
    if any(k in heads or k.endswith((".fc.weight", ".classifier.weight")) for k in keys):
        return "; it looks like an image-classification network"
    return ""


def _check_pixel_buffers(state: dict[str, np.ndarray], source: str) -> None:
    """Drop Meta's pixel buffers from ``state``; refuse values other than SAM's."""
    for name, standard in PIXEL_BUFFERS.items():
        value = state.pop(name, None)
        if value is None:
            continue
        flat = np.ravel(value).astype(np.float64)
        if flat.shape != (3,) or not np.allclose(flat, standard, atol=1e-3):
            raise ValueError(
                f"{source}: {name} is {flat.tolist()}, not SAM's {list(standard)}; "
                "this port supports only the standard normalisation"
            )


def _as_float32(value: np.ndarray) -> np.ndarray:
    """Cast floating arrays to float32 (the model's dtype); leave others alone."""
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


__all__ = [
    "DECODER_NOTE",
    "PIXEL_BUFFERS",
    "SamCheckpoint",
    "read_sam_checkpoint",
    "read_sam_state_dict",
    "sam_checkpoint_from",
]
