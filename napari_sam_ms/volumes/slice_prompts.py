"""Prompts for the next slice of a volume made from the previous slice's mask (numpy, scipy).

A propagated object's next slice is prompted by one of :data:`PROMPT_KINDS`, a ``+``-joined
choice of

- ``box``: the previous mask's bounding box, enlarged by ``margin`` of its size (at least
  2 pixels) on every side;
- ``points``: one foreground point at the inner maximum of the distance to the mask's edge
  (:func:`scipy.ndimage.distance_transform_edt`), and four background points just outside
  the mask's bounding box, left, right, above and below that point;
- ``mask``: the previous prediction's low-res logits as ``mask_input``. A committed mask
  has no logits: a kind with ``mask`` then prompts with the box alone (the best kind without
  logits in the measurement of ``tests/test_propagate.py``; the default is ``box``).

Coordinates are SAM's: points (x, y) and boxes (x0, y0, x1, y1) in slice pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

PROMPT_KINDS = ("box", "points", "box+points", "mask", "box+mask", "points+mask", "box+points+mask")
BOX_MARGIN = 0.1  # fraction of the box's size added on each side


def check_kind(kind: str) -> frozenset[str]:
    """The parts (``box``, ``points``, ``mask``) of a prompt kind, or a clear error."""
    parts = frozenset(str(kind).replace(" ", "").split("+"))
    if kind not in PROMPT_KINDS and not (parts and parts <= {"box", "points", "mask"}):
        raise ValueError(f"unknown prompt kind {kind!r}: choose one of {', '.join(PROMPT_KINDS)}")
    return parts


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mask's pixels, inclusive (the mask must not be empty)."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return int(x0), int(y0), int(x1), int(y1)


def enlarged_box(mask: np.ndarray, margin: float = BOX_MARGIN) -> np.ndarray:
    """The mask's bounding box grown by ``margin`` of its size per side, inside the slice."""
    x0, y0, x1, y1 = bounding_box(mask)
    h, w = mask.shape
    dx = max(2.0, margin * (x1 - x0 + 1))
    dy = max(2.0, margin * (y1 - y0 + 1))
    box = [max(0.0, x0 - dx), max(0.0, y0 - dy), min(w - 1.0, x1 + dx), min(h - 1.0, y1 + dy)]
    return np.asarray(box, np.float64)


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel deepest inside the mask (distance transform maximum)."""
    x0, y0, x1, y1 = bounding_box(mask)
    crop = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1], 1)  # the crop's border counts as outside
    dist = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x0 + c - 1), int(y0 + r - 1)


def point_prompt(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One foreground point inside the mask and up to four background points just outside.

    Returns:
        points (N, 2) as (x, y) and labels (N,) (1 first, then 0s).
    """
    x, y = inner_point(mask)
    x0, y0, x1, y1 = bounding_box(mask)
    h, w = mask.shape
    gap = max(3, int(round(0.15 * max(x1 - x0 + 1, y1 - y0 + 1))))
    points = [(x, y)]
    for bx, by in ((x0 - gap, y), (x1 + gap, y), (x, y0 - gap), (x, y1 + gap)):
        if 0 <= bx < w and 0 <= by < h:
            points.append((bx, by))
    labels = np.zeros(len(points), np.int64)
    labels[0] = 1
    return np.asarray(points, np.float64), labels


def prompt_from_mask(
    mask: np.ndarray,
    kind: str,
    logits: np.ndarray | None = None,
    margin: float = BOX_MARGIN,
) -> dict[str, Any]:
    """Keyword arguments for ``predictor.predict`` prompting the next slice from ``mask``.

    Args:
        mask: (H, W) bool mask of the previous slice (not empty).
        kind: one of :data:`PROMPT_KINDS`.
        logits: the previous prediction's (1, h, w) low-res logits (None: none known).
        margin: box enlargement per side, as a fraction of the box's size.

    Returns:
        ``point_coords``, ``point_labels``, ``box``, ``mask_input`` and ``multimask_output``
        (True only for points alone, which may be ambiguous).
    """
    parts = set(check_kind(kind))
    if logits is None and "mask" in parts:
        parts = {"box"}
    out: dict[str, Any] = {"point_coords": None, "point_labels": None, "box": None}
    if "box" in parts:
        out["box"] = enlarged_box(mask, margin)
    if "points" in parts:
        out["point_coords"], out["point_labels"] = point_prompt(mask)
    out["mask_input"] = None if "mask" not in parts else np.asarray(logits, np.float32)
    out["multimask_output"] = parts == {"points"}
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (two empty masks: 1.0)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


__all__ = [
    "BOX_MARGIN",
    "PROMPT_KINDS",
    "bounding_box",
    "check_kind",
    "enlarged_box",
    "inner_point",
    "mask_iou",
    "point_prompt",
    "prompt_from_mask",
]
