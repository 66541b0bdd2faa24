"""Simulated prompts for training, as in the SAM paper (numpy only).

All coordinates are (x, y) pixels of the mask's own frame (the model input frame during
training): ``x`` is the column, ``y`` the row, as SAM's points and boxes.

- First prompt of an object: one point drawn uniformly from its mask, or its bounding box
  with each coordinate moved by noise of standard deviation 10 % of the box side, at most
  20 pixels.
- Correction clicks: a point drawn uniformly from the error region between the previous
  prediction and the ground truth; a missed pixel (false negative) gives a foreground
  click (label 1), a wrongly included one (false positive) a background click (label 0).
  With no error left the click is padding (label -1, which the prompt encoder ignores).
- The previous low-resolution logits are passed back as the mask input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

BOX_NOISE = 0.1  # noise std as a fraction of the box side
BOX_NOISE_MAX = 20.0  # pixels


@dataclass(frozen=True)
class Prompts:
    """Prompts of a batch of B objects (all of the same structure, for static shapes).

    Attributes:
        coords: (B, N, 2) float32 points (x, y), or None.
        labels: (B, N) int32, 1 foreground, 0 background, -1 padding; None with coords.
        boxes: (B, 4) float32 x0, y0, x1, y1, or None.
        mask_input: (B, 1, h, w) float32 low-res logits of the previous round, or None.
    """

    coords: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @property
    def multimask(self) -> bool:
        """Three masks for an ambiguous prompt (one point alone), else one."""
        return (
            self.coords is not None
            and self.coords.shape[1] == 1
            and self.boxes is None
            and self.mask_input is None
        )

    @property
    def n_points(self) -> int:
        return 0 if self.coords is None else int(self.coords.shape[1])


def sample_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pixel (x, y) drawn uniformly from a non-empty boolean mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("cannot sample a point from an empty mask")
    i = rng.integers(rows.size)
    return np.array([cols[i], rows[i]], np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1) of a non-empty mask; x1, y1 are the last pixel's indexes,
    as Meta's ``batched_mask_to_box``."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("cannot take the box of an empty mask")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def jitter_box(
    box: np.ndarray,
    rng: np.random.Generator,
    shape: tuple[int, int],
    noise: float = BOX_NOISE,
    max_shift: float = BOX_NOISE_MAX,
) -> np.ndarray:
    """Move each coordinate by N(0, noise * side), clipped to ``max_shift`` pixels and to the
    (H, W) image; corners are kept in order."""
    box = np.asarray(box, np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
    shift = np.clip(rng.normal(0.0, noise * side), -max_shift, max_shift)
    x0, y0, x1, y1 = box + shift
    h, w = shape
    x0, x1 = np.clip(sorted((x0, x1)), 0, w - 1)
    y0, y1 = np.clip(sorted((y0, y1)), 0, h - 1)
    return np.array([x0, y0, x1, y1], np.float32)


def correction_click(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A click drawn uniformly from the error region of ``pred`` against ``gt``.

    Returns:
        (x, y) and its label: 1 in a false negative, 0 in a false positive, -1 (at (0, 0))
        if the prediction is exact.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    error = pred != gt
    rows, cols = np.nonzero(error)
    if rows.size == 0:
        return np.zeros(2, np.float32), -1
    i = rng.integers(rows.size)
    label = int(gt[rows[i], cols[i]])  # missed object pixel -> foreground click
    return np.array([cols[i], rows[i]], np.float32), label


def initial_prompts(masks: np.ndarray, rng: np.random.Generator, use_box: bool) -> Prompts:
    """One point per object, or one jittered box per object. masks: (B, H, W) bool."""
    masks = np.asarray(masks, bool)
    if use_box:
        shape = masks.shape[1:]
        boxes = np.stack([jitter_box(mask_box(m), rng, shape) for m in masks])
        return Prompts(boxes=boxes)
    coords = np.stack([sample_point(m, rng) for m in masks])[:, None, :]
    return Prompts(coords=coords, labels=np.ones((len(masks), 1), np.int32))


def add_correction(
    prompts: Prompts,
    pred: np.ndarray,
    gt: np.ndarray,
    low_res_logits: np.ndarray,
    rng: np.random.Generator,
) -> Prompts:
    """The next round's prompts: one correction click per object appended to the points,
    and the previous low-res logits as mask input.

    Args:
        prompts: this round's prompts.
        pred: (B, H, W) bool, this round's chosen mask per object.
        gt: (B, H, W) bool ground truth.
        low_res_logits: (B, h, w) or (B, 1, h, w) logits of the chosen masks.
    """
    clicks = [correction_click(p, g, rng) for p, g in zip(pred, gt, strict=True)]
    new_xy = np.stack([c[0] for c in clicks])[:, None, :]
    new_lab = np.array([[c[1]] for c in clicks], np.int32)
    if prompts.coords is None:
        coords, labels = new_xy, new_lab
    else:
        coords = np.concatenate([prompts.coords, new_xy], 1)
        labels = np.concatenate([prompts.labels, new_lab], 1)
    logits = np.asarray(low_res_logits, np.float32)
    if logits.ndim == 3:
        logits = logits[:, None]
    return replace(prompts, coords=coords, labels=labels, mask_input=logits)


__all__ = [
    "BOX_NOISE",
    "BOX_NOISE_MAX",
    "Prompts",
    "add_correction",
    "correction_click",
    "initial_prompts",
    "jitter_box",
    "mask_box",
    "sample_point",
]
