"""Shape tables and model-type detection: which SAM size a set of parameter shapes is.

:func:`expected_shapes` lists every parameter's shape for a configuration without building
the model; :func:`detect_model_type` reads a state dict's shapes back into a configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .config import CONFIGS, TINY_VIT, config_of, early_scale, encoder_kind, full_config

# ---------------------------------------------------------------------------------------
# Model sizes from shapes
# ---------------------------------------------------------------------------------------


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every SAM parameter for a config, without building the model."""
    c = full_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    shapes.update(_tiny_vit_shapes(c) if encoder_kind(c) == TINY_VIT else _encoder_shapes(c))
    shapes.update(_prompt_encoder_shapes(c))
    shapes.update(_decoder_shapes(c))
    if c.get("hq_fusion"):
        dim, early = c["prompt_embed_dim"], c["encoder_embed_dims"][0]
        fuse = "mask_decoder.compress_vit_feat"
        k = 2 // early_scale(c)  # early features twice as fine: a 1x1 kernel
        shapes.update({f"{fuse}.0.weight": (early, dim // 4, k, k), f"{fuse}.0.bias": (dim // 4,)})
        shapes.update(_norm(f"{fuse}.1", dim // 4))
        shapes.update(
            {f"{fuse}.3.weight": (dim // 4, dim // 8, 2, 2), f"{fuse}.3.bias": (dim // 8,)}
        )
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


# MobileSAM's fixed TinyViT ratios (build_sam_vit_t): MLP and MBConv widths, local conv.
TINY_VIT_MLP_RATIO = 4
TINY_VIT_MBCONV_RATIO = 4
TINY_VIT_LOCAL_CONV = 3
# The first stage is convolutional: its heads and window size change nothing; MobileSAM's.
TINY_VIT_FIRST_STAGE = (
    CONFIGS["vit_t"]["encoder_heads"][0],
    CONFIGS["vit_t"]["encoder_window_sizes"][0],
)


def _conv_bn(name: str, n_out: int, n_in: int, k: int) -> dict[str, tuple[int, ...]]:
    """A bias-free convolution ``c`` and a BatchNorm ``bn`` with its running statistics."""
    s: dict[str, tuple[int, ...]] = {f"{name}.c.weight": (n_out, n_in, k, k)}
    s.update(_norm(f"{name}.bn", n_out))
    s.update({f"{name}.bn.running_mean": (n_out,), f"{name}.bn.running_var": (n_out,)})
    s[f"{name}.bn.num_batches_tracked"] = ()
    return s


def _tiny_vit_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    dims, depths = c["encoder_embed_dims"], c["encoder_depths"]
    heads, windows = c["encoder_heads"], c["encoder_window_sizes"]
    pre = "image_encoder"
    s = _conv_bn(f"{pre}.patch_embed.seq.0", dims[0] // 2, 3, 3)
    s.update(_conv_bn(f"{pre}.patch_embed.seq.2", dims[0], dims[0] // 2, 3))
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        layer = f"{pre}.layers.{i}"
        for j in range(depth):
            b = f"{layer}.blocks.{j}"
            if i == 0:
                hidden = dim * TINY_VIT_MBCONV_RATIO
                s.update(_conv_bn(f"{b}.conv1", hidden, dim, 1))
                s.update(_conv_bn(f"{b}.conv2", hidden, 1, 3))
                s.update(_conv_bn(f"{b}.conv3", dim, hidden, 1))
                continue
            s.update(_norm(f"{b}.attn.norm", dim))
            s.update(_linear(f"{b}.attn.qkv", 3 * dim, dim))
            s.update(_linear(f"{b}.attn.proj", dim, dim))
            s[f"{b}.attn.attention_biases"] = (heads[i], windows[i] ** 2)
            s.update(_norm(f"{b}.mlp.norm", dim))
            s.update(_linear(f"{b}.mlp.fc1", TINY_VIT_MLP_RATIO * dim, dim))
            s.update(_linear(f"{b}.mlp.fc2", dim, TINY_VIT_MLP_RATIO * dim))
            s.update(_conv_bn(f"{b}.local_conv", dim, 1, TINY_VIT_LOCAL_CONV))
        if i + 1 < len(dims):
            out = dims[i + 1]
            s.update(_conv_bn(f"{layer}.downsample.conv1", out, dim, 1))
            s.update(_conv_bn(f"{layer}.downsample.conv2", out, 1, 3))
            s.update(_conv_bn(f"{layer}.downsample.conv3", out, out, 1))
    out_ch = c["prompt_embed_dim"]
    s[f"{pre}.neck.0.weight"] = (out_ch, dims[-1], 1, 1)
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
    unknown (and unused) when every block attends globally. A TinyViT encoder (MobileSAM)
    is recognised by its stages (``image_encoder.layers.*``); its image size changes no shape.
    """
    if any(k.startswith("image_encoder.layers.") for k in shapes):
        return _tiny_vit_config_from_shapes(shapes)
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
            **_prompt_side_sizes(shapes),
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"this does not look like a SAM state dict ({exc!r})") from None
    windows = [s for s in sides if s != grid]
    if windows:
        cfg["window_size"] = windows[0]
    return {k: tuple(v) if isinstance(v, tuple) else int(v) for k, v in cfg.items()}


def _prompt_side_sizes(shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    return dict(
        prompt_embed_dim=shapes["image_encoder.neck.0.weight"][0],
        mask_in_chans=shapes["prompt_encoder.mask_downscaling.3.weight"][0],
        decoder_mlp_dim=shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0],
        iou_head_hidden_dim=shapes["mask_decoder.iou_prediction_head.layers.0.weight"][0],
    )


def _tiny_vit_config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """:func:`config_from_shapes` of a TinyViT (MobileSAM) state dict."""
    pre = "image_encoder.layers"
    try:
        blocks: dict[int, set[int]] = {}
        for k in shapes:
            if m := re.match(rf"{pre}\.(\d+)\.blocks\.(\d+)\.", k):
                blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        n = 1 + max(blocks)
        depths = tuple(1 + max(blocks.get(i, {-1})) for i in range(n))
        dims = [shapes[f"{pre}.0.blocks.0.conv1.c.weight"][1]]
        dims += [shapes[f"{pre}.{i}.blocks.0.attn.norm.weight"][0] for i in range(1, n)]
        biases = [shapes[f"{pre}.{i}.blocks.0.attn.attention_biases"] for i in range(1, n)]
        heads, window = TINY_VIT_FIRST_STAGE
        cfg = dict(
            encoder=TINY_VIT,
            encoder_embed_dims=tuple(int(d) for d in dims),
            encoder_depths=depths,
            encoder_heads=(heads, *(int(b[0]) for b in biases)),
            # a window of w x w tokens has w*w distinct (|dy|, |dx|) offsets
            encoder_window_sizes=(window, *(round(b[1] ** 0.5) for b in biases)),
            **_prompt_side_sizes(shapes),
        )
        if fuse := shapes.get("mask_decoder.compress_vit_feat.0.weight"):
            if fuse[-1] != 2:
                raise ValueError(
                    "fusion of early features twice as fine as the embedding: which patch "
                    "merging halves the grid is not in the shapes; save it with its config"
                )
            # fusion from a 2x2 kernel implies one token grid: every merging has stride 1
            cfg.update(hq_fusion=True, encoder_merge_strides=(1,) * (n - 1))
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"this does not look like a MobileSAM state dict ({exc!r})") from None
    return {k: v if isinstance(v, tuple | str | bool) else int(v) for k, v in cfg.items()}


def detect_model_type(shapes: Mapping[str, Sequence[int]]) -> tuple[str, dict[str, Any]]:
    """The name in ``CONFIGS`` whose sizes match the shapes, or ``"custom"``, and the config.

    For ``custom``, sizes no shape reveals take :data:`~.config.DEFAULT_SIZES` (Meta's values;
    ``decoder_num_heads=8``).
    """
    derived = config_from_shapes(shapes)
    for name, cfg in CONFIGS.items():
        full = full_config(cfg)
        same_fusion = full.get("hq_fusion", False) == derived.get("hq_fusion", False)
        if same_fusion and all(k in full and full[k] == v for k, v in derived.items()):
            return name, full
    return "custom", full_config(derived)


def resolve_config(
    shapes: Mapping[str, Sequence[int]], model_type: str | None
) -> tuple[str, dict[str, Any]]:
    """The (model type, full config) to convert for: given, or detected from shapes."""
    if model_type is None:
        return detect_model_type(shapes)
    config = config_of(model_type)
    name = next(n for n, cfg in CONFIGS.items() if full_config(cfg) == config)
    return name, config


__all__ = ["config_from_shapes", "detect_model_type", "expected_shapes", "resolve_config"]
