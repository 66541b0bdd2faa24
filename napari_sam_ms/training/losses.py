"""SAM's training losses in MindSpore (usable in PyNative and in compiled graphs).

As in the SAM paper: masks are supervised with focal loss and dice loss in a 20:1 ratio
(the sigmoid focal and dice losses of DETR: alpha 0.25, gamma 2, dice smoothing 1), and the
IoU head with the mean squared error between its prediction and the IoU of the predicted
mask (logits > 0) with the ground truth, weight 1.

With several candidate masks (one ambiguous point), only the candidate with the lowest mask
loss is back-propagated. The IoU head is supervised on every candidate, since it must rank
them (the actual IoU of each is its target).
"""

from __future__ import annotations

from typing import NamedTuple

import mindspore as ms
from mindspore import Tensor, ops

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0


class SamLoss(NamedTuple):
    """Names of the tuple :func:`sam_loss` returns (``SamLoss(*sam_loss(...))``): total
    loss and its parts (means over the batch) plus per-mask details."""

    total: Tensor  # scalar
    focal: Tensor  # scalar, of the chosen candidates
    dice: Tensor  # scalar, of the chosen candidates
    iou_mse: Tensor  # scalar, over all candidates
    iou: Tensor  # (B, M) actual IoU of every candidate (no gradient)
    best: Tensor  # (B,) int32 index of the back-propagated candidate


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss per mask, averaged over pixels. logits, targets: (..., H, W) -> (...)."""
    p = ops.sigmoid(logits)
    # Stable binary cross-entropy with logits.
    ce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ops.pow(1 - p_t, gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(axis=(-2, -1))


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice per mask. logits, targets: (..., H, W) -> (...)."""
    p = ops.sigmoid(logits)
    inter = (p * targets).sum(axis=(-2, -1))
    total = p.sum(axis=(-2, -1)) + targets.sum(axis=(-2, -1))
    return 1 - (2 * inter + smooth) / (total + smooth)


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of ``logits > 0`` with ``targets > 0.5`` per mask (no gradient); empty/empty is 1."""
    pred = (ops.stop_gradient(logits) > 0).astype(ms.float32)
    targets = (targets > 0.5).astype(ms.float32)
    inter = (pred * targets).sum(axis=(-2, -1))
    union = pred.sum(axis=(-2, -1)) + targets.sum(axis=(-2, -1)) - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1.0), ops.ones_like(union))


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, M, h, w) logits to ``size`` (as Meta's postprocessing)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return ops.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def sam_loss(
    logits: Tensor,
    iou_pred: Tensor,
    gt: Tensor,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    iou_weight: float = IOU_WEIGHT,
    focal_alpha: float = 0.25,
) -> tuple[Tensor, ...]:
    """SAM's loss for a batch, as a plain tuple in the order of :class:`SamLoss` (a named
    tuple built inside a compiled graph would cut the gradient).

    Args:
        logits: (B, M, h, w) mask logits (M = 1 or 3); resized to the ground truth's size.
        iou_pred: (B, M) predicted IoUs.
        gt: (B, H, W) float32 ground truth, binary or soft (the fraction of each pixel
            inside the object, for a ground truth reduced to the logits' size).
        focal_alpha: weight of object pixels in the focal loss (background: 1 - alpha);
            negative: no weighting.
    """
    logits = upsample_logits(logits, tuple(gt.shape[-2:]))
    target = gt.expand_dims(1)
    target = ops.broadcast_to(target, logits.shape)
    focal = sigmoid_focal_loss(logits, target, focal_alpha)  # (B, M)
    dice = dice_loss(logits, target)
    per_mask = focal_weight * focal + dice_weight * dice
    best = ops.argmin(ops.stop_gradient(per_mask), axis=1).astype(ms.int32)  # (B,)
    onehot = ops.one_hot(best, per_mask.shape[1], Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    chosen_focal = (focal * onehot).sum(axis=1).mean()
    chosen_dice = (dice * onehot).sum(axis=1).mean()
    iou = mask_iou(logits, target)
    iou_mse = ((iou_pred - iou) ** 2).mean()
    total = focal_weight * chosen_focal + dice_weight * chosen_dice + iou_weight * iou_mse
    return total, chosen_focal, chosen_dice, iou_mse, iou, best


__all__ = [
    "DICE_WEIGHT",
    "FOCAL_WEIGHT",
    "IOU_WEIGHT",
    "SamLoss",
    "dice_loss",
    "mask_iou",
    "sam_loss",
    "sigmoid_focal_loss",
    "upsample_logits",
]
