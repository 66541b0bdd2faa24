"""Model registry and builders (mirrors ``segment_anything/build_sam.py``).

``sam_model_registry[name](checkpoint=None)`` builds a model; like Meta's builders, no
checkpoint means random weights. :func:`build_sam` is the convenience entry point that
fetches official weights when no checkpoint is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import runtime
from . import settings as _settings
from .modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TinyViT,
    TwoWayTransformer,
)
from .modeling.tiny_vit import merge_strides_of
from .weights.checkpoint import load_checkpoint, load_params, read_params
from .weights.config import (
    CONFIGS,
    MODEL_TYPES,
    TINY_VIT,
    encoder_kind,
    full_config,
    normalize_model_type,
)
from .weights.config import (
    early_scale as early_scale_of,
)
from .weights.registry import fetch_checkpoint


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
    attn_chunk_mb: float | None = None,
) -> Sam:
    """Build SAM with the given sizes and optionally load a checkpoint (.ckpt or .pth).

    ``attn_chunk_mb`` (not a size: default ``Settings.attn_chunk_mb``) bounds the memory of
    the encoder's attention, computed a few heads at a time.
    """
    if attn_chunk_mb is None:
        attn_chunk_mb = _settings.current().attn_chunk_mb
    encoder = ImageEncoderViT(
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
        attn_chunk_mb=attn_chunk_mb,
    )
    config = dict(
        encoder_embed_dim=encoder_embed_dim,
        encoder_depth=encoder_depth,
        encoder_num_heads=encoder_num_heads,
        encoder_global_attn_indexes=tuple(encoder_global_attn_indexes),
        image_size=image_size,
        patch_size=patch_size,
        window_size=window_size,
    )
    prompt_side = dict(
        prompt_embed_dim=prompt_embed_dim,
        mask_in_chans=mask_in_chans,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_num_heads=decoder_num_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return _assemble(encoder, image_size // patch_size, config, prompt_side, checkpoint)


def _build_sam_tiny_vit(
    encoder_embed_dims: Sequence[int],
    encoder_depths: Sequence[int],
    encoder_heads: Sequence[int],
    encoder_window_sizes: Sequence[int],
    checkpoint: str | os.PathLike | None = None,
    image_size: int = 1024,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    encoder: str = TINY_VIT,
    encoder_merge_strides: Sequence[int] | None = None,
    hq_fusion: bool = False,
) -> Sam:
    """Build MobileSAM (a TinyViT image encoder, as MobileSAM's ``build_sam_vit_t``) with
    the given sizes and optionally load a checkpoint (.ckpt or .pth).

    ``encoder_merge_strides`` (None: MobileSAM's) sets the token grid of each stage;
    ``hq_fusion`` adds HQ-SAM-style fusion of the first stage's features into the mask
    decoder's upscaled mask features (the encoder then also returns those features).
    """
    n_stages = len(encoder_depths)
    strides = merge_strides_of(n_stages, encoder_merge_strides)
    image_encoder = TinyViT(
        img_size=image_size,
        in_chans=3,
        embed_dims=tuple(encoder_embed_dims),
        depths=tuple(encoder_depths),
        num_heads=tuple(encoder_heads),
        window_sizes=tuple(encoder_window_sizes),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        out_chans=prompt_embed_dim,
        merge_strides=strides,
        return_early=hq_fusion,
    )
    config = dict(
        encoder=encoder,
        encoder_embed_dims=tuple(encoder_embed_dims),
        encoder_depths=tuple(encoder_depths),
        encoder_heads=tuple(encoder_heads),
        encoder_window_sizes=tuple(encoder_window_sizes),
        image_size=image_size,
    )
    if strides != merge_strides_of(n_stages, None):
        config["encoder_merge_strides"] = strides
    early_scale = early_scale_of(config)  # the decoder refuses other than 1 or 2
    early_dim = 0
    if hq_fusion:
        config["hq_fusion"] = True
        early_dim = int(encoder_embed_dims[0])
    prompt_side = dict(
        prompt_embed_dim=prompt_embed_dim,
        mask_in_chans=mask_in_chans,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_num_heads=decoder_num_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return _assemble(
        image_encoder,
        image_encoder.embedding_size,
        config,
        prompt_side,
        checkpoint,
        early_dim,
        early_scale,
    )


def _assemble(
    image_encoder: ImageEncoderViT | TinyViT,
    embedding_size: int,
    config: dict[str, Any],
    prompt_side: dict[str, int],
    checkpoint: str | os.PathLike | None,
    early_dim: int = 0,
    early_scale: int = 1,
) -> Sam:
    """SAM around an image encoder: Meta's prompt encoder and mask decoder of the sizes
    ``prompt_side``; ``model.config`` is ``config`` and ``prompt_side``. ``early_dim`` > 0
    turns on the decoder's fusion of early encoder features of that many channels, on a
    grid ``early_scale`` times the embedding's."""
    dim = prompt_side["prompt_embed_dim"]
    image_size = image_encoder.img_size
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=prompt_side["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=dim,
                mlp_dim=prompt_side["decoder_mlp_dim"],
                num_heads=prompt_side["decoder_num_heads"],
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_side["iou_head_hidden_dim"],
            hq_fusion=early_dim > 0,
            early_dim=early_dim,
            early_scale=early_scale,
        ),
    )
    sam.config = {**config, **prompt_side}
    sam.set_train(False)
    runtime.compile_model(sam, enable=runtime.jit_default(_settings.current()))
    if checkpoint is not None:
        load_checkpoint(sam, checkpoint)
    return sam


def build_sam_from_config(config: Mapping[str, Any]) -> Sam:
    """A model with random weights of the given size arguments (completed with the
    defaults of :mod:`napari_sam_ms.weights.config`)."""
    full = full_config(config)
    return _build_function(full)(**full)


def _build_function(config: Mapping[str, Any]) -> Callable[..., Sam]:
    """The builder of ``config``'s encoder kind: ViT (Meta's) or TinyViT (MobileSAM's)."""
    return _build_sam_tiny_vit if encoder_kind(config) == TINY_VIT else _build_sam


def _builder(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **overrides) -> Sam:
        sizes = {**CONFIGS[name], **overrides}
        return _build_function(sizes)(**sizes, checkpoint=checkpoint)

    build.__name__ = f"build_sam_{name}"
    build.__doc__ = f"Build SAM {name}; ``checkpoint`` None gives random weights."
    return build


build_sam_vit_h = _builder("vit_h")
build_sam_vit_l = _builder("vit_l")
build_sam_vit_b = _builder("vit_b")
build_sam_vit_t = _builder("vit_t")
build_sam_micro = _builder("micro")
build_sam_tiny = _builder("tiny")
# Candidates for the embedded default's second design: buildable by name, not in Meta's
# registry (no official weights).
build_sam_micro_t = _builder("micro_t")
build_sam_micro_t_hq = _builder("micro_t_hq")

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
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
            :mod:`napari_sam_ms.weights.registry`), converted, and reused afterwards.
        overrides: size arguments passed to the builder (tests use reduced depths).
    """
    model_type = normalize_model_type(model_type)
    if checkpoint is None:
        checkpoint = fetch_checkpoint(model_type)
    return _registered(model_type)(checkpoint=checkpoint, **overrides)


def _registered(model_type: str) -> Callable[..., Sam]:
    """The builder of a model type: Meta's registry, else a builder of its ``CONFIGS``."""
    return sam_model_registry.get(model_type) or _builder(model_type)


def build_sam_from_checkpoint(path: str | os.PathLike) -> Sam:
    """Build a Sam of the size stored in (or detected from) ``path`` and load it."""
    params, config = read_params(path)
    if config is None:
        raise ValueError(
            f"{path} does not say which model size it holds; use "
            "sam_model_registry[model_type](checkpoint=path) instead"
        )
    model = build_sam_from_config(config)
    load_params(model, params, str(path))
    return model


def build_sam_any(path: str | os.PathLike, model_type: str) -> Sam:
    """Build from ``path``: the size stored in it when it says (our ``.ckpt`` files, e.g. a
    fine-tuned model), else ``model_type``'s size (Meta's ``.pth``, converted files)."""
    params, config = read_params(path)
    if config is None:
        return _registered(normalize_model_type(model_type))(checkpoint=path)
    model = build_sam_from_config(config)
    load_params(model, params, str(path))
    return model


__all__ = [
    "CONFIGS",
    "MODEL_TYPES",
    "build_sam",
    "build_sam_any",
    "build_sam_from_checkpoint",
    "build_sam_from_config",
    "build_sam_micro",
    "build_sam_micro_t",
    "build_sam_micro_t_hq",
    "build_sam_tiny",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "normalize_model_type",
    "sam_model_registry",
]
