"""Convert Meta's PyTorch SAM checkpoints (``.pth``) to MindSpore (``.ckpt``) without torch.

Reading: :mod:`napari_sam_ms.utils.pth_reader` unpickles the ``.pth`` zip with an
unpickler that resolves only what tensor data needs (no torch, nothing else executed).

Converting: :func:`convert` reads the state dict, works out the model size from the
parameter shapes (or takes ``model_type``), checks every key and shape against that size,
and writes ``<name>.ckpt`` atomically with the size arguments stored inside (see
:mod:`napari_sam_ms.checkpoint`).

Command line (the model card's form)::

    python -m napari_sam_ms.convert_weight --torch_path path/sam_vit_b_01ec64.pth
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .build_sam import CONFIGS, _build_sam, normalize_model_type
from .checkpoint import check_param_shapes, save_checkpoint
from .utils.pth_reader import load_pth, read_state_dict

__all__ = ["convert", "load_pth", "main", "read_sam_state_dict", "read_state_dict"]

PathLike = str | os.PathLike

logger = logging.getLogger(__name__)

# Meta's non-persistent buffers; accepted (and dropped) if a checkpoint carries them.
PIXEL_BUFFERS = {
    "pixel_mean": (123.675, 116.28, 103.53),
    "pixel_std": (58.395, 57.12, 57.375),
}


def read_sam_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """A SAM state dict from a ``.pth``: float32 arrays, pixel buffers checked and dropped."""
    state = read_state_dict(path)
    for name, standard in PIXEL_BUFFERS.items():
        value = state.pop(name, None)
        if value is None:
            continue
        flat = np.ravel(value).astype(np.float64)
        if flat.shape != (3,) or not np.allclose(flat, standard, atol=1e-3):
            raise ValueError(
                f"{path}: {name} is {flat.tolist()}, not SAM's {list(standard)}; "
                "this port supports only the standard normalisation"
            )
    return {k: _as_float32(v) for k, v in state.items()}


def _as_float32(value: np.ndarray) -> np.ndarray:
    """Cast floating arrays to float32 (the model's dtype); leave others alone."""
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


# ---------------------------------------------------------------------------------------
# Model sizes from shapes
# ---------------------------------------------------------------------------------------

_SIZE_ARGS = (
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "encoder_global_attn_indexes",
)


def full_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """All size arguments of ``_build_sam``: ``cfg`` completed with its defaults."""
    params = inspect.signature(_build_sam).parameters
    out: dict[str, Any] = {}
    for name, param in params.items():
        if name == "checkpoint":
            continue
        if name in cfg:
            out[name] = cfg[name]
        elif param.default is inspect.Parameter.empty:
            raise ValueError(f"size argument {name!r} is missing from {dict(cfg)}")
        else:
            out[name] = param.default
    unknown = set(cfg) - set(out)
    if unknown:
        raise ValueError(f"unknown size arguments {sorted(unknown)}")
    out["encoder_global_attn_indexes"] = tuple(int(i) for i in out["encoder_global_attn_indexes"])
    return out


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every SAM parameter for a config, without building the model."""
    c = full_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    shapes.update(_encoder_shapes(c))
    shapes.update(_prompt_encoder_shapes(c))
    shapes.update(_decoder_shapes(c))
    return shapes


def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _norm(name: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _encoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    e, patch = c["encoder_embed_dim"], c["patch_size"]
    grid = c["image_size"] // patch
    head_dim = e // c["encoder_num_heads"]
    out_ch = c["prompt_embed_dim"]
    pre = "image_encoder"
    s: dict[str, tuple[int, ...]] = {
        f"{pre}.pos_embed": (1, grid, grid, e),
        f"{pre}.patch_embed.proj.weight": (e, 3, patch, patch),
        f"{pre}.patch_embed.proj.bias": (e,),
    }
    for i in range(c["encoder_depth"]):
        b = f"{pre}.blocks.{i}"
        side = grid if i in c["encoder_global_attn_indexes"] else c["window_size"]
        s.update(_norm(f"{b}.norm1", e))
        s[f"{b}.attn.rel_pos_h"] = (2 * side - 1, head_dim)
        s[f"{b}.attn.rel_pos_w"] = (2 * side - 1, head_dim)
        s.update(_linear(f"{b}.attn.qkv", 3 * e, e))
        s.update(_linear(f"{b}.attn.proj", e, e))
        s.update(_norm(f"{b}.norm2", e))
        s.update(_linear(f"{b}.mlp.lin1", 4 * e, e))
        s.update(_linear(f"{b}.mlp.lin2", e, 4 * e))
    s[f"{pre}.neck.0.weight"] = (out_ch, e, 1, 1)
    s.update(_norm(f"{pre}.neck.1", out_ch))
    s[f"{pre}.neck.2.weight"] = (out_ch, out_ch, 3, 3)
    s.update(_norm(f"{pre}.neck.3", out_ch))
    return s


def _prompt_encoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    dim, m = c["prompt_embed_dim"], c["mask_in_chans"]
    pre = "prompt_encoder"
    s: dict[str, tuple[int, ...]] = {
        f"{pre}.pe_layer.positional_encoding_gaussian_matrix": (2, dim // 2),
    }
    for i in range(4):
        s[f"{pre}.point_embeddings.{i}.weight"] = (1, dim)
    s[f"{pre}.not_a_point_embed.weight"] = (1, dim)
    ds = f"{pre}.mask_downscaling"
    s.update({f"{ds}.0.weight": (m // 4, 1, 2, 2), f"{ds}.0.bias": (m // 4,)})
    s.update(_norm(f"{ds}.1", m // 4))
    s.update({f"{ds}.3.weight": (m, m // 4, 2, 2), f"{ds}.3.bias": (m,)})
    s.update(_norm(f"{ds}.4", m))
    s.update({f"{ds}.6.weight": (dim, m, 1, 1), f"{ds}.6.bias": (dim,)})
    s[f"{pre}.no_mask_embed.weight"] = (1, dim)
    return s


def _attention(name: str, dim: int, downsample: int) -> dict[str, tuple[int, ...]]:
    inner = dim // downsample
    s: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj"):
        s.update(_linear(f"{name}.{proj}", inner, dim))
    s.update(_linear(f"{name}.out_proj", dim, inner))
    return s


def _mlp(name: str, dims: Sequence[int]) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        s.update(_linear(f"{name}.layers.{i}", n_out, n_in))
    return s


def _decoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    dim, mlp_dim, hidden = c["prompt_embed_dim"], c["decoder_mlp_dim"], c["iou_head_hidden_dim"]
    pre = "mask_decoder"
    t = f"{pre}.transformer"
    s: dict[str, tuple[int, ...]] = {}
    for i in range(2):
        layer = f"{t}.layers.{i}"
        s.update(_attention(f"{layer}.self_attn", dim, 1))
        s.update(_norm(f"{layer}.norm1", dim))
        s.update(_attention(f"{layer}.cross_attn_token_to_image", dim, 2))
        s.update(_norm(f"{layer}.norm2", dim))
        s.update(_linear(f"{layer}.mlp.lin1", mlp_dim, dim))
        s.update(_linear(f"{layer}.mlp.lin2", dim, mlp_dim))
        s.update(_norm(f"{layer}.norm3", dim))
        s.update(_norm(f"{layer}.norm4", dim))
        s.update(_attention(f"{layer}.cross_attn_image_to_token", dim, 2))
    s.update(_attention(f"{t}.final_attn_token_to_image", dim, 2))
    s.update(_norm(f"{t}.norm_final_attn", dim))
    s[f"{pre}.iou_token.weight"] = (1, dim)
    s[f"{pre}.mask_tokens.weight"] = (4, dim)
    up = f"{pre}.output_upscaling"
    s.update({f"{up}.0.weight": (dim, dim // 4, 2, 2), f"{up}.0.bias": (dim // 4,)})
    s.update(_norm(f"{up}.1", dim // 4))
    s.update({f"{up}.3.weight": (dim // 4, dim // 8, 2, 2), f"{up}.3.bias": (dim // 8,)})
    for i in range(4):
        s.update(_mlp(f"{pre}.output_hypernetworks_mlps.{i}", (dim, dim, dim, dim // 8)))
    s.update(_mlp(f"{pre}.iou_prediction_head", (dim, hidden, hidden, 4)))
    return s


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Size arguments readable from parameter shapes.

    ``decoder_num_heads`` does not change any shape and is left out; the window size is
    unknown (and unused) when every block attends globally.
    """
    try:
        e, _, patch, _ = shapes["image_encoder.patch_embed.proj.weight"]
        grid = shapes["image_encoder.pos_embed"][1]
        depth = 1 + max(
            int(m.group(1)) for k in shapes if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
        )
        sides = [
            (shapes[f"image_encoder.blocks.{i}.attn.rel_pos_h"][0] + 1) // 2 for i in range(depth)
        ]
        head_dim = shapes["image_encoder.blocks.0.attn.rel_pos_h"][1]
        if not head_dim or e % head_dim:
            raise ValueError(f"head size {head_dim} does not divide embedding size {e}")
        cfg = dict(
            encoder_embed_dim=e,
            encoder_depth=depth,
            encoder_num_heads=e // head_dim,
            encoder_global_attn_indexes=tuple(i for i, s in enumerate(sides) if s == grid),
            image_size=grid * patch,
            patch_size=patch,
            prompt_embed_dim=shapes["image_encoder.neck.0.weight"][0],
            mask_in_chans=shapes["prompt_encoder.mask_downscaling.3.weight"][0],
            decoder_mlp_dim=shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0],
            iou_head_hidden_dim=shapes["mask_decoder.iou_prediction_head.layers.0.weight"][0],
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"this does not look like a SAM state dict ({exc!r})") from None
    windows = [s for s in sides if s != grid]
    if windows:
        cfg["window_size"] = windows[0]
    return {k: tuple(v) if isinstance(v, tuple) else int(v) for k, v in cfg.items()}


def detect_model_type(shapes: Mapping[str, Sequence[int]]) -> tuple[str, dict[str, Any]]:
    """The name in ``CONFIGS`` whose sizes match the shapes, or ``"custom"``, and the config.

    For ``custom``, sizes no shape reveals take ``_build_sam``'s defaults (Meta's values;
    ``decoder_num_heads=8``).
    """
    derived = config_from_shapes(shapes)
    for name, cfg in CONFIGS.items():
        full = full_config(cfg)
        if all(full[k] == v for k, v in derived.items()):
            return name, full
    return "custom", full_config(derived)


def resolve_config(
    shapes: Mapping[str, Sequence[int]], model_type: str | None
) -> tuple[str, dict[str, Any]]:
    """The (model type, full config) to convert for: given, or detected from shapes."""
    if model_type is None:
        return detect_model_type(shapes)
    name = normalize_model_type(model_type)
    name = "vit_h" if name == "default" else name
    return name, full_config(CONFIGS[name])


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------


def default_output(torch_path: PathLike) -> Path:
    """``path/name.pth`` -> ``path/name.ckpt``."""
    return Path(torch_path).with_suffix(".ckpt")


def convert(
    torch_path: PathLike, out_path: PathLike | None = None, model_type: str | None = None
) -> Path:
    """Convert a Meta SAM ``.pth`` to a MindSpore ``.ckpt`` and return its path.

    Args:
        torch_path: the ``.pth`` written by ``torch.save`` (official checkpoints included).
        out_path: where to write; default ``<torch_path without suffix>.ckpt`` beside it.
        model_type: ``vit_b``/``vit_l``/``vit_h``/``tiny`` (or ``sam_vit_b``); detected from
            the shapes when None.

    Raises:
        FileNotFoundError: ``torch_path`` does not exist.
        ValueError: unreadable file, or keys/shapes that do not fit the model (all named).
    """
    return _convert(torch_path, out_path, model_type)[0]


def _convert(
    torch_path: PathLike, out_path: PathLike | None, model_type: str | None
) -> tuple[Path, str]:
    """:func:`convert`, also returning the model type written."""
    state = read_sam_state_dict(torch_path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    name, config = resolve_config(shapes, model_type)
    if name == "custom":
        logger.warning("%s has a custom size; decoder_num_heads assumed to be 8", torch_path)
    check_param_shapes(shapes, expected_shapes(config), source=f"{torch_path} ({name})")
    out = Path(out_path) if out_path is not None else default_output(torch_path)
    save_checkpoint(state, out, config=config)
    logger.info("converted %s to %s (model type %s)", torch_path, out, name)
    return out, name


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a PyTorch SAM checkpoint (.pth) to MindSpore (.ckpt)."
    )
    parser.add_argument("--torch_path", "--torch-path", required=True, help="input .pth file")
    parser.add_argument(
        "--model_type",
        "--model-type",
        default=None,
        help=f"one of {sorted(CONFIGS)} (default: detected from the weights)",
    )
    parser.add_argument("--out", default=None, help="output .ckpt (default: beside the input)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success)."""
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return int(exc.code or 0)
    try:
        out, name = _convert(args.torch_path, args.out, args.model_type)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (model type {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
