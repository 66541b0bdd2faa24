"""One labelled object in a stack of label planes (numpy only): where it is, which id to
propagate, and which voxels a propagated object may take.

The stack axis is axis 0 of the arrays here (the caller moves the chosen axis first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np


class LabelWrite(NamedTuple):
    """Which voxels a propagated object gets (see :func:`plan_label_write`)."""

    where: np.ndarray  # bool, the stack's shape: voxels to set to the label
    new_slices: tuple[int, ...]  # slices that did not hold the label and now do
    kept: int  # voxels of the object left to other labels (Overwrite off)


def label_slices(labels: np.ndarray, label: int) -> tuple[int, ...]:
    """Indices along axis 0 of the planes holding ``label``."""
    if labels.ndim < 2 or labels.shape[0] == 0:
        return ()
    present = np.any((labels == label).reshape(labels.shape[0], -1), axis=1)
    return tuple(int(i) for i in np.flatnonzero(present))


def last_committed(log: Mapping[Any, Any] | None, present: Callable[[int], bool]) -> int | None:
    """The newest id of a commit log (``layer.metadata["sam_prompts"]``: insertion order)
    for which ``present(id)`` (it still has pixels), else None."""
    for key in reversed(list(log or {})):
        try:
            label = int(key)
        except (TypeError, ValueError):
            continue
        if present(label):
            return label
    return None


def plan_label_write(
    existing: np.ndarray, mask: np.ndarray, label: int, overwrite: bool
) -> LabelWrite:
    """The voxels of ``mask`` to set to ``label`` in ``existing`` (same shape).

    As a commit does: without ``overwrite`` pixels of other labels are kept; background and
    the label's own pixels are always writable. Voxels already equal to ``label`` are not
    written again.
    """
    if existing.shape != mask.shape:
        raise ValueError(f"labels of shape {existing.shape} and mask {mask.shape} differ")
    mask = np.asarray(mask, bool)
    own = existing == label
    free = np.ones(existing.shape, bool) if overwrite else (existing == 0) | own
    where = mask & free & ~own
    kept = int(np.count_nonzero(mask & ~free))
    had = np.any(own.reshape(own.shape[0], -1), axis=1)
    gets = np.any(where.reshape(where.shape[0], -1), axis=1)
    new_slices = tuple(int(i) for i in np.flatnonzero(gets & ~had))
    return LabelWrite(where, new_slices, kept)


def slice_ranges(slices: tuple[int, ...]) -> str:
    """``"3-7, 9"`` for (3, 4, 5, 6, 7, 9)."""
    parts: list[tuple[int, int]] = []
    for s in slices:
        if parts and parts[-1][1] == s - 1:
            parts[-1] = (parts[-1][0], s)
        else:
            parts.append((s, s))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


__all__ = ["LabelWrite", "label_slices", "last_committed", "plan_label_write", "slice_ranges"]
