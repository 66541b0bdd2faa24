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


__all__ = ["NO_DECAY", "focal_weight_at", "lr_at", "make_optimizer", "trainable_parameters"]
