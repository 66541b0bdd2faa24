"""Model registry and builders (mirrors ``segment_anything/build_sam.py``).

``sam_model_registry[name](checkpoint=None)`` builds a model; like Meta's builders, no
checkpoint means random weights. :func:`build_sam` is the convenience entry point that
fetches official weights when no checkpoint is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from . import runtime
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

# Size arguments of each configuration; everything else is shared by _build_sam.
CONFIGS: dict[str, dict] = {
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
    # The embedded default model (weights/sam_ms_micro.ckpt): SAM's architecture at a size
    # trainable on a CPU (3.9 M parameters, 256-pixel input, 8-pixel patches: a 32x32 token
    # grid and 128x128 low-res masks), trained here on synthetic microscopy
    # (napari_sam_ms.training.default_model: first with 16-pixel patches, then refined).
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


def _build_sam(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: Sequence[int],
    checkpoint: str | os.PathLike | None = None,
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    """Build SAM with the given sizes and optionally load a checkpoint (.ckpt or .pth)."""
    embedding_size = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_eps=1e-6,
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )
    sam.config = dict(
        encoder_embed_dim=encoder_embed_dim,
        encoder_depth=encoder_depth,
        encoder_num_heads=encoder_num_heads,
        encoder_global_attn_indexes=tuple(encoder_global_attn_indexes),
        image_size=image_size,
        patch_size=patch_size,
        window_size=window_size,
        prompt_embed_dim=prompt_embed_dim,
        mask_in_chans=mask_in_chans,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_num_heads=decoder_num_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    sam.set_train(False)
    runtime.compile_model(sam, enable=runtime.jit_default())
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(sam, checkpoint)
    return sam


def _builder(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **overrides) -> Sam:
        return _build_sam(**{**CONFIGS[name], **overrides}, checkpoint=checkpoint)

    build.__name__ = f"build_sam_{name}"
    build.__doc__ = f"Build SAM {name}; ``checkpoint`` None gives random weights."
    return build


build_sam_vit_h = _builder("vit_h")
build_sam_vit_l = _builder("vit_l")
build_sam_vit_b = _builder("vit_b")
build_sam_micro = _builder("micro")
build_sam_tiny = _builder("tiny")

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "micro": build_sam_micro,
    "tiny": build_sam_tiny,
}


def build_sam(
    model_type: str = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    **overrides,
) -> Sam:
    """Build a SAM model with weights.

    Args:
        model_type: a key of :data:`sam_model_registry`, or ``sam_vit_b`` style names.
        checkpoint: path to a ``.ckpt`` (MindSpore) or ``.pth`` (Meta) checkpoint. When None,
            the official weights of ``model_type`` are fetched once (see
            :mod:`napari_sam_ms.weights`), converted, and reused afterwards.
        overrides: size arguments passed to the builder (tests use reduced depths).
    """
    model_type = normalize_model_type(model_type)
    if checkpoint is None:
        from .weights import fetch_checkpoint

        checkpoint = fetch_checkpoint(model_type)
    return sam_model_registry[model_type](checkpoint=checkpoint, **overrides)


def normalize_model_type(name: str) -> str:
    """Accept ``vit_b``, the model card's ``sam_vit_b`` and the registry's ``sam_ms_micro``;
    raise a clear error otherwise."""
    key = name
    for prefix in ("sam_ms_", "sam_"):
        if name.startswith(prefix) and name[len(prefix) :] in sam_model_registry:
            key = name[len(prefix) :]
            break
    if key not in sam_model_registry:
        raise ValueError(f"unknown model type {name!r}; choose one of {sorted(sam_model_registry)}")
    return key


__all__ = [
    "CONFIGS",
    "build_sam",
    "build_sam_micro",
    "build_sam_tiny",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "normalize_model_type",
    "sam_model_registry",
]
