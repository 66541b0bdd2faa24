"""The trained parameters, AdamW and the learning-rate and loss-weight schedules."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from mindspore import Tensor, nn


class Schedule(Protocol):
    """The fields of a training config the schedules read."""

    steps: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float


# Training the image encoder on CPU: the largest encoder size (tokens x width x depth)
# allowed. The micro model (32x32 tokens x 192 x 6 = 1.2 M) trains; vit_b (64x64 x 768 x 12
# = 38 M) exhausts a CPU machine's memory in its first round.
CPU_ENCODER_TRAINING_LIMIT = 8_000_000

NO_DECAY = (
    "pos_embed",
    "rel_pos",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)


def lr_at(step: int, config: Schedule) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * t))


def focal_weight_at(step: int, weight: float, warmup: int) -> float:
    """The focal weight of a step (linear ramp from 0 to ``weight`` over ``warmup`` steps)."""
    if warmup <= 0:
        return weight
    return weight * min(1.0, step / warmup)


def trainable_parameters(model, train_encoder: bool, train_prompt_encoder: bool) -> list:
    """The parameters a run updates: the mask decoder, optionally the prompt and image
    encoders (buffers such as the positional-encoding matrix are never trained)."""
    parts = [model.mask_decoder]
    if train_prompt_encoder:
        parts.append(model.prompt_encoder)
    if train_encoder:
        parts.append(model.image_encoder)
    return [p for part in parts for p in part.trainable_params()]


def make_optimizer(params: list, config: Schedule) -> nn.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and positional tables."""
    decay = [p for p in params if p.ndim >= 2 and not any(n in p.name for n in NO_DECAY)]
    rest = [p for p in params if all(p is not q for q in decay)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    lr = Tensor(np.float32(lr_at(0, config)))
    return nn.AdamWeightDecay(groups, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8)


def encoder_training_problem(model, limit: int | None = None) -> str | None:
    """Why the image encoder of ``model`` cannot be trained on CPU (None: it can); ``limit``
    defaults to :data:`CPU_ENCODER_TRAINING_LIMIT`."""
    limit = CPU_ENCODER_TRAINING_LIMIT if limit is None else limit
    h, w = model.prompt_encoder.image_embedding_size
    encoder = model.image_encoder
    blocks = list(getattr(encoder, "blocks", ()))
    size = h * w * blocks[0].kind["dim"] * len(blocks) if blocks else 0
    if hasattr(encoder, "sides"):  # TinyViT: tokens x width x depth of every stage
        blocks = [blk for layer in encoder.layers for blk in layer.blocks]
        stages = zip(encoder.sides, encoder.embed_dims, encoder.depths, strict=True)
        size = sum(side * side * dim * depth for side, dim, depth in stages)
    if size <= limit:
        return None
    return (
        f"training the image encoder of this model ({len(blocks)} blocks on a {h}x{w} token "
        "grid, e.g. SAM ViT-B/L/H) needs more memory than a CPU machine has (vit_b was "
        "stopped at 24 GB): leave the image encoder frozen (untick 'Train image encoder', "
        "or drop --train-encoder); the prompt encoder and mask decoder are still trained"
    )


__all__ = [
    "CPU_ENCODER_TRAINING_LIMIT",
    "NO_DECAY",
    "encoder_training_problem",
    "focal_weight_at",
    "lr_at",
    "make_optimizer",
    "trainable_parameters",
]
