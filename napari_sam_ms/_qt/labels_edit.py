"""Write masks into a napari Labels layer as one undoable edit.

Uses the Labels layer's public editing API: ``data_setitem`` records each change in the undo
history and ``block_history`` groups them into a single step, so one Ctrl+Z (or
``layer.undo()``) removes a whole commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


class Plan(NamedTuple):
    """Which pixels new objects get."""

    plane: np.ndarray  # (H, W) int64 new ids, 0 = untouched
    ids: list[int]  # the ids used, in mask order
    empty: list[int]  # indices of the masks that kept no pixel (and got no id)


def next_free_id(data: Any) -> int:
    """One more than the largest label (1 for an empty layer)."""
    arr = np.asarray(data)
    return int(arr.max()) + 1 if arr.size else 1


def plan_objects(
    existing: np.ndarray, masks: Sequence[np.ndarray], first_id: int, overwrite: bool
) -> Plan:
    """Decide which pixels each new object gets.

    Objects never take pixels from each other (earlier ones win); without ``overwrite`` they
    also leave every non-zero pixel of ``existing`` alone.

    Returns:
        The :class:`Plan`.
    """
    plane = np.zeros(existing.shape, np.int64)
    ids, empty = [], []
    free = np.ones(existing.shape, bool) if overwrite else existing == 0
    next_id = first_id
    for i, mask in enumerate(masks):
        m = np.asarray(mask, bool) & free & (plane == 0)
        if not m.any():
            empty.append(i)
            continue
        plane[m] = next_id
        ids.append(next_id)
        next_id += 1
    return Plan(plane, ids, empty)


def write_plane(layer: Any, slice_index: tuple[int, ...], plane: np.ndarray) -> None:
    """Set the non-zero pixels of ``plane`` into ``layer.data[slice_index]``, undoably."""
    rows, cols = np.nonzero(plane)
    if rows.size == 0:
        return
    lead = tuple(np.full(rows.size, i, dtype=np.intp) for i in slice_index)
    values = plane[rows, cols].astype(layer.data.dtype, copy=False)
    with layer.block_history():
        layer.data_setitem(lead + (rows, cols), values)


def commit_masks(
    layer: Any,
    slice_index: tuple[int, ...],
    masks: Sequence[np.ndarray],
    overwrite: bool,
    provenance: Callable[[int], dict[str, Any]],
) -> Plan:
    """Write masks as new objects into one plane of ``layer`` (one undo step) and log in
    ``layer.metadata["sam_prompts"]`` what made each id (``provenance(mask index)``)."""
    plan = plan_objects(
        np.asarray(layer.data[slice_index]), masks, next_free_id(layer.data), overwrite
    )
    write_plane(layer, slice_index, plan.plane)
    log = layer.metadata.setdefault("sam_prompts", {})
    kept = [i for i in range(len(masks)) if i not in plan.empty]
    for label, i in zip(plan.ids, kept, strict=True):
        log[int(label)] = provenance(i)
    return plan


__all__ = ["Plan", "commit_masks", "next_free_id", "plan_objects", "write_plane"]
