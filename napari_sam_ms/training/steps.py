"""The compiled training round: forward, loss, backward and AdamW update of one prompt kind.

One graph per :class:`RoundKey` (whether the image encoder runs, which prompts, how many
masks per prompt), reused across steps. The decoder is the engine's
:func:`~napari_sam_ms.engine.decode_fn`, the same cells the predictor calls. A batch too
large for one pass is split into chunks whose gradients are summed before one update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import cv2
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..engine import PromptsKey, decode_fn
from ..modeling import Sam
from .losses import sam_loss


class RoundKey(NamedTuple):
    """What a round's graph is compiled for."""

    with_encoder: bool
    has_points: bool
    has_box: bool
    has_mask: bool
    multimask: bool

    @property
    def prompts(self) -> PromptsKey:
        return PromptsKey(self.has_points, self.has_box, self.has_mask)


class StepOutput(NamedTuple):
    """What a round returns (its graph returns the plain tuple in this order)."""

    loss: Tensor  # scalar, the differentiated total
    focal: Tensor  # scalar
    dice: Tensor  # scalar
    iou_mse: Tensor  # scalar
    iou: Tensor  # (B, M) actual IoU of every candidate mask
    best: Tensor  # (B,) index of the back-propagated candidate
    low_res: Tensor  # (B, M, h, w) mask logits
    iou_pred: Tensor  # (B, M) predicted IoUs
    embeddings: Tensor | None = None  # (n, C, h, w) when the round ran the encoder
    early: Tensor | None = None  # (n, C0, h, w) with it, for a decoder with HQ fusion


class LossWeights(NamedTuple):
    """The loss's fixed weights (the focal weight is an input: it may ramp up)."""

    dice: float
    iou: float
    focal_alpha: float


def forward_fn(model: Sam, key: RoundKey, weights: LossWeights) -> Callable:
    """The loss of one round and its outputs, as a plain tuple in :class:`StepOutput`'s
    order (the first is differentiated).

    The returned function takes ``(src, owner, coords, labels, boxes, mask_input, gt,
    focal_w)``: ``src`` is pixels when ``key.with_encoder``, else image embeddings;
    ``owner`` (B,) the image of each mask. With HQ-SAM-style fusion embeddings come with
    the early features: ``src`` is then (embeddings, early) in rounds without the encoder.
    """
    decode = decode_fn(model, key.prompts, key.multimask)
    with_encoder = key.with_encoder
    fusion = model.mask_decoder.hq_fusion

    def forward(src, owner, coords, labels, boxes, mask_input, gt, focal_w):
        emb = model.image_encoder(model.preprocess(src)) if with_encoder else src
        early = None
        if fusion:
            emb, early = emb
        feats = ops.gather(emb, owner, 0)
        early_b = None if early is None else ops.gather(early, owner, 0)
        low_res, iou_pred = decode(feats, coords, labels, boxes, mask_input, None, early_b)
        total, focal, dice, iou_mse, iou, best = sam_loss(
            low_res, iou_pred, gt, focal_w, weights.dice, weights.iou, weights.focal_alpha
        )
        out = (
            total,
            focal,
            dice,
            iou_mse,
            iou,
            best,
            ops.stop_gradient(low_res),
            ops.stop_gradient(iou_pred),
        )
        if with_encoder:
            out = out + (ops.stop_gradient(emb),)
            if fusion:
                out = out + (ops.stop_gradient(early),)
        return out

    return forward


def update_fn(optimizer: nn.Optimizer, clip: float) -> Callable:
    """Gradient clipping (global norm ``clip``; 0: none) and the optimizer's update."""

    def update(grads):
        if clip > 0:
            grads = ops.clip_by_global_norm(grads, clip)
        return optimizer(grads)

    return update


def maybe_jit(fn: Callable, enable: bool) -> Callable:
    """``ms.jit(fn)`` when ``enable``, else ``fn``."""
    return ms.jit(fn) if enable else fn


class TrainingSteps:
    """The compiled rounds of a trainer, made on first use and kept by :class:`RoundKey`.

    Args:
        model: the Sam being trained.
        optimizer: updates the trained parameters.
        weights: the loss weights.
        grad_clip: global gradient norm limit (0: none).
        jit: compile the rounds (False: op by op, for debugging).
    """

    def __init__(
        self, model: Sam, optimizer: nn.Optimizer, weights: LossWeights, grad_clip: float, jit: bool
    ) -> None:
        self.model, self.optimizer, self.weights, self.jit = model, optimizer, weights, jit
        self.grad_clip = grad_clip
        self.steps: dict[RoundKey, Callable] = {}  # forward, backward and update
        self.grads: dict[RoundKey, Callable] = {}  # chunked rounds: gradients only
        self.apply = maybe_jit(
            update_fn(optimizer, grad_clip), jit
        )  # chunked rounds: clip + update

    def forward_fn(self, key: RoundKey) -> Callable:
        """See :func:`forward_fn`."""
        return forward_fn(self.model, key, self.weights)

    def run(self, key: RoundKey, src: Tensor, args: list, focal: Tensor, chunk: int) -> StepOutput:
        """One update: in one pass, or from the summed gradients of chunks of ``chunk``
        masks when the batch (``args[0]``: the owner of each mask) is larger."""
        n = int(args[0].shape[0])
        if chunk < n:
            return self._chunked(key, src, args, focal, n, chunk)
        if key not in self.steps:
            self.steps[key] = self._make_step(key)
        return StepOutput(*self.steps[key](src, *args, focal))

    def _make_step(self, key: RoundKey) -> Callable:
        params = self.optimizer.parameters
        grad_fn = ms.value_and_grad(self.forward_fn(key), None, params, has_aux=True)
        update = update_fn(self.optimizer, self.grad_clip)

        def step(*args):
            out, grads = grad_fn(*args)
            update(grads)
            return out

        return maybe_jit(step, self.jit)

    def _chunked(
        self, key: RoundKey, src: Tensor, args: list, focal: Tensor, n: int, chunk: int
    ) -> StepOutput:
        """One update from the summed gradients of ``n / chunk`` decoder passes (each
        weighted by its share, so the update equals one pass over all ``n`` masks)."""
        if key not in self.grads:
            params = self.optimizer.parameters
            grad_fn = ms.value_and_grad(self.forward_fn(key), None, params, has_aux=True)
            self.grads[key] = maybe_jit(grad_fn, self.jit)
        total, outs = None, []
        for start in range(0, n, chunk):
            part = [a[start : start + chunk] if a.shape[0] == n else a for a in args]
            out, grads = self.grads[key](src, *part, focal)
            total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
            outs.append(out)
        share = chunk / n  # every chunk's loss is a mean over its masks: weight them equally
        self.apply(tuple(g * share for g in total))
        scalars = (np.mean([o[k].asnumpy() for o in outs], dtype=np.float32) for k in range(4))
        rows = (np.concatenate([o[k].asnumpy() for o in outs]) for k in range(4, len(outs[0])))
        return StepOutput(*(Tensor(v) for v in (*scalars, *rows)))


# Memory budget of one compiled decoder training pass (forward + backward) over a chunk of
# masks; a round keeps one such graph per prompt kind (up to four). A graph keeps about
# BYTES_PER_MASK_ELEMENT bytes per mask per image-embedding element (tokens x channels).
MASK_CHUNK_MB = 2048
BYTES_PER_MASK_ELEMENT = 1000


def masks_per_pass(model: Sam, budget_mb: float = MASK_CHUNK_MB) -> int:
    """How many masks one decoder training pass may take within ``budget_mb`` (at least 1),
    from the size of the model's image embedding (see :data:`MASK_CHUNK_MB`)."""
    pe = model.prompt_encoder
    h, w = pe.image_embedding_size
    per_mask = BYTES_PER_MASK_ELEMENT * h * w * pe.embed_dim
    return max(1, int(budget_mb * 2**20 // per_mask))


def reduce_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(B, S, S) bool -> (B, size, size) float32 fraction of each cell inside the mask
    (S must be a multiple of size)."""
    b, s, _ = masks.shape
    if s == size:
        return masks.astype(np.float32)
    if s % size:
        raise ValueError(f"loss_size {size} must divide the input size {s}")
    f = s // size
    return masks.reshape(b, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)


def upscale_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) logits -> (B, size, size), bilinear with pixel centres aligned as
    ``ops.interpolate(..., align_corners=False)``."""
    return np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR) for x in logits])


__all__ = [
    "MASK_CHUNK_MB",
    "LossWeights",
    "RoundKey",
    "StepOutput",
    "TrainingSteps",
    "forward_fn",
    "maybe_jit",
    "masks_per_pass",
    "reduce_masks",
    "update_fn",
    "upscale_logits",
]
