"""Model sizes: the public size arguments of every SAM configuration, as plain data.

``CONFIGS[name]`` holds the size arguments that differ from :data:`DEFAULT_SIZES` (Meta's
values); :func:`full_config` completes them. Nothing here builds a model.

Two image encoders: Meta's ViT (the default; its configs name no ``encoder``) and
MobileSAM's TinyViT (``encoder="tiny_vit"``, sized by :data:`TINY_VIT_REQUIRED` per stage
and :data:`TINY_VIT_DEFAULTS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Sizes every configuration shares unless it says otherwise (Meta's ``_build_sam``).
DEFAULT_SIZES: dict[str, Any] = dict(
    image_size=1024,
    patch_size=16,
    window_size=14,
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    iou_head_hidden_dim=256,
)
REQUIRED_SIZES = (
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "encoder_global_attn_indexes",
)

# MobileSAM's TinyViT encoder (``vit_t``): sizes per stage, then the prompt side as Meta's.
TINY_VIT = "tiny_vit"
TINY_VIT_REQUIRED = (
    "encoder_embed_dims",
    "encoder_depths",
    "encoder_heads",
    "encoder_window_sizes",
)
TINY_VIT_DEFAULTS: dict[str, Any] = {
    k: v for k, v in DEFAULT_SIZES.items() if k not in ("patch_size", "window_size")
}
# Optional TinyViT settings, stored only when they differ from these (MobileSAM's) values:
# the patch merging strides (None: 2, ..., 2, 1) and HQ-SAM-style fusion of the first
# stage's features into the mask decoder's upscaled mask features.
TINY_VIT_OPTIONAL: dict[str, Any] = dict(encoder_merge_strides=None, hq_fusion=False)
# The second design of the embedded default (docs/training.md, benchmarks/design_probe.py):
# TinyViT's convolutional stem and MBConv stage, attention stages that keep a 64x64 grid
# on 256-pixel input (output stride 4, masks at input resolution), micro's prompt side. The
# first stage is convolutional: its heads and window (vit_t's) change nothing.
MICRO_T: dict[str, Any] = dict(
    encoder=TINY_VIT,
    encoder_embed_dims=(32, 64, 128, 160),
    encoder_depths=(2, 2, 4, 2),
    encoder_heads=(2, 2, 4, 5),
    encoder_window_sizes=(7, 8, 16, 32),
    encoder_merge_strides=(1, 1, 1),
    image_size=256,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)
# A lighter candidate: micro_t's stem and first two stages on the 64x64 grid, the last two
# on 32x32 (micro's embedding grid and decoder cost; a 4x cheaper decoder in training); with
# hq_fusion the 64x64 first-stage features reach the mask features.
MICRO_T8: dict[str, Any] = {**MICRO_T, "encoder_merge_strides": (1, 2, 1)}
CONFIGS: dict[str, dict[str, Any]] = {
    "vit_h": dict(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "vit_l": dict(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_b": dict(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    # MobileSAM (Zhang et al. 2023): TinyViT-5M distilled from vit_h, Meta's prompt side.
    "vit_t": dict(
        encoder=TINY_VIT,
        encoder_embed_dims=(64, 128, 160, 320),
        encoder_depths=(2, 2, 6, 2),
        encoder_heads=(2, 4, 5, 10),
        encoder_window_sizes=(7, 7, 14, 7),
    ),
    # The embedded default model (weights/sam_ms_micro.ckpt): SAM's architecture at a size
    # trainable on a CPU (3.9 M parameters, 256-pixel input, 8-pixel patches), trained on
    # synthetic microscopy (napari_sam_ms.training.default_model, docs/training.md).
    "micro": dict(
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(2, 5),
        image_size=256,
        patch_size=8,
        window_size=8,
        prompt_embed_dim=128,
        mask_in_chans=16,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
    ),
    # Candidates for the embedded default's second design (not shipped yet): MICRO_T, and the
    # same with HQ-SAM-style fusion of early features.
    "micro_t": MICRO_T,
    "micro_t_hq": {**MICRO_T, "hq_fusion": True},
    "micro_t8": MICRO_T8,
    "micro_t8_hq": {**MICRO_T8, "hq_fusion": True},
    # A few-kilobyte model with every part of SAM, for tests and examples.
    "tiny": dict(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=128,
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}

# The registry's keys: every configuration, and Meta's "default" (vit_h).
MODEL_TYPES: tuple[str, ...] = ("default", *CONFIGS)


def encoder_kind(cfg: Mapping[str, Any]) -> str:
    """``"vit"`` (Meta's encoder, the default) or ``"tiny_vit"`` (MobileSAM's)."""
    kind = cfg.get("encoder", "vit")
    if kind not in ("vit", TINY_VIT):
        raise ValueError(f"unknown encoder {kind!r}; choose 'vit' or {TINY_VIT!r}")
    return kind


def full_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """All size arguments: ``cfg`` completed with :data:`DEFAULT_SIZES` (ViT) or
    :data:`TINY_VIT_DEFAULTS` (TinyViT). ViT configs carry no ``encoder`` entry."""
    if encoder_kind(cfg) == TINY_VIT:
        return _full_tiny_vit_config(cfg)
    cfg = {k: v for k, v in cfg.items() if k != "encoder"}
    if cfg.get("hq_fusion"):
        raise ValueError("hq_fusion needs a TinyViT encoder (encoder='tiny_vit')")
    cfg.pop("hq_fusion", None)
    missing = [name for name in REQUIRED_SIZES if name not in cfg]
    if missing:
        raise ValueError(f"size argument(s) {missing} missing from {dict(cfg)}")
    out = {name: cfg[name] for name in REQUIRED_SIZES}
    out.update({name: cfg.get(name, default) for name, default in DEFAULT_SIZES.items()})
    unknown = set(cfg) - set(out)
    if unknown:
        raise ValueError(f"unknown size arguments {sorted(unknown)}")
    out["encoder_global_attn_indexes"] = tuple(int(i) for i in out["encoder_global_attn_indexes"])
    return out


def _full_tiny_vit_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    missing = [name for name in TINY_VIT_REQUIRED if name not in cfg]
    if missing:
        raise ValueError(f"size argument(s) {missing} missing from {dict(cfg)}")
    out: dict[str, Any] = {"encoder": TINY_VIT}
    out.update({name: tuple(int(v) for v in cfg[name]) for name in TINY_VIT_REQUIRED})
    out.update({name: cfg.get(name, default) for name, default in TINY_VIT_DEFAULTS.items()})
    unknown = set(cfg) - set(out) - set(TINY_VIT_OPTIONAL)
    if unknown:
        raise ValueError(f"unknown size arguments {sorted(unknown)}")
    stages = {len(out[name]) for name in TINY_VIT_REQUIRED}
    n = stages.pop() if len(stages) == 1 else 0
    if n < 2:
        raise ValueError(f"TinyViT sizes must give one value per stage (2 or more): {out}")
    strides = cfg.get("encoder_merge_strides")
    if strides is not None:
        strides = tuple(int(v) for v in strides)
        if len(strides) != n - 1 or min(strides) < 1:
            raise ValueError(f"encoder_merge_strides needs {n - 1} positive strides: {strides}")
        if strides != tuple(1 if i == n - 1 else 2 for i in range(1, n)):
            out["encoder_merge_strides"] = strides
    if cfg.get("hq_fusion"):
        if early_scale(out) not in (1, 2):
            # the early features must lie on the embedding's grid or one twice as fine
            raise ValueError(
                "hq_fusion needs encoder_merge_strides whose product is 1 or 2 "
                "(early features on the embedding's grid or one twice as fine)"
            )
        out["hq_fusion"] = True
    return out


def early_scale(config: Mapping[str, Any]) -> int:
    """How much finer the first TinyViT stage's grid is than the embedding's (the product
    of the merge strides; MobileSAM's default strides 2, ..., 2, 1)."""
    n = len(config["encoder_depths"])
    strides = config.get("encoder_merge_strides") or (2,) * (n - 2) + (1,)
    return math.prod(strides)


def config_of(model_type: str) -> dict[str, Any]:
    """The full size arguments of a model type (``default`` is vit_h)."""
    name = normalize_model_type(model_type)
    return full_config(CONFIGS["vit_h" if name == "default" else name])


def normalize_model_type(name: str) -> str:
    """Accept ``vit_b``, the model card's ``sam_vit_b`` and the registry's ``sam_ms_micro``;
    raise a clear error otherwise."""
    key = name
    for prefix in ("sam_ms_", "sam_"):
        if name.startswith(prefix) and name[len(prefix) :] in MODEL_TYPES:
            key = name[len(prefix) :]
            break
    if key not in MODEL_TYPES:
        raise ValueError(f"unknown model type {name!r}; choose one of {sorted(MODEL_TYPES)}")
    return key


__all__ = [
    "CONFIGS",
    "DEFAULT_SIZES",
    "MODEL_TYPES",
    "REQUIRED_SIZES",
    "TINY_VIT",
    "MICRO_T",
    "TINY_VIT_DEFAULTS",
    "TINY_VIT_OPTIONAL",
    "TINY_VIT_REQUIRED",
    "config_of",
    "encoder_kind",
    "full_config",
    "normalize_model_type",
]
