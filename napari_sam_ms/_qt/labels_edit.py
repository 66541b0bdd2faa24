"""Write masks into a napari Labels layer as one undoable edit.

Uses the Labels layer's public editing API: ``data_setitem`` records each change in the undo
history and ``block_history`` groups them into a single step, so one Ctrl+Z (or
``layer.undo()``) removes a whole commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

ZARR_PIXELS = 8192 * 8192  # label planes larger than this are zarr arrays, not numpy


class Plan(NamedTuple):
    """Which pixels new objects get."""

    plane: np.ndarray  # (H, W) int64 new ids, 0 = untouched
    ids: list[int]  # the ids used, in mask order
    empty: list[int]  # indices of the masks that kept no pixel (and got no id)


def next_free_id(data: Any) -> int:
    """One more than the largest label (1 for an empty layer); zarr/dask data are read in
    bands of rows, never whole."""
    if isinstance(data, np.ndarray) or not hasattr(data, "shape"):
        arr = np.asarray(data)
        return int(arr.max()) + 1 if arr.size else 1
    if hasattr(data, "compute"):  # dask
        return int(data.max().compute()) + 1 if data.size else 1
    rows = data.shape[-2] if len(data.shape) >= 2 else 1
    step = max(1, (1 << 24) // max(1, int(np.prod(data.shape)) // max(1, rows)))
    top = 0
    for y in range(0, rows, step):
        top = max(top, int(np.asarray(data[..., y : y + step, :]).max(initial=0)))
    return top + 1


def new_label_data(shape: Sequence[int], dtype: Any = np.int32) -> Any:
    """Zeros for a new Labels layer: numpy, or an in-memory zarr array (chunks of 1024 px)
    when a plane has more than :data:`ZARR_PIXELS` pixels."""
    shape = tuple(int(n) for n in shape)
    if shape[-1] * shape[-2] <= ZARR_PIXELS:
        return np.zeros(shape, dtype)
    import zarr

    chunks = (1,) * (len(shape) - 2) + (1024, 1024)
    return zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype, fill_value=0
    )


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


def write_plane(
    layer: Any, slice_index: tuple[int, ...], plane: np.ndarray, origin: Sequence[int] = (0, 0)
) -> None:
    """Set the non-zero pixels of ``plane`` into ``layer.data[slice_index]`` with its top
    left at ``origin`` (row, col), undoably."""
    rows, cols = np.nonzero(plane)
    if rows.size == 0:
        return
    values = plane[rows, cols].astype(layer.data.dtype, copy=False)
    rows, cols = rows + int(origin[0]), cols + int(origin[1])
    lead = tuple(np.full(rows.size, i, dtype=np.intp) for i in slice_index)
    with layer.block_history():
        layer.data_setitem(lead + (rows, cols), values)


def commit_masks(
    layer: Any,
    slice_index: tuple[int, ...],
    masks: Sequence[np.ndarray],
    overwrite: bool,
    provenance: Callable[[int], dict[str, Any]],
    origin: Sequence[int] = (0, 0),
) -> Plan:
    """Write masks as new objects into one plane of ``layer`` (one undo step) and log in
    ``layer.metadata["sam_prompts"]`` what made each id (``provenance(mask index)``).

    ``masks`` may cover only a region of the plane whose top left is ``origin`` (row, col):
    only that region is read and written (tiles on large planes)."""
    window = slice_index
    if masks:
        (y0, x0), (h, w) = (int(v) for v in origin), masks[0].shape
        window = slice_index + (slice(y0, y0 + h), slice(x0, x0 + w))
    existing = np.asarray(layer.data[window])
    plan = plan_objects(existing, masks, next_free_id(layer.data), overwrite)
    write_plane(layer, slice_index, plan.plane, origin)
    log = layer.metadata.setdefault("sam_prompts", {})
    kept = [i for i in range(len(masks)) if i not in plan.empty]
    for label, i in zip(plan.ids, kept, strict=True):
        log[int(label)] = provenance(i)
    return plan


class PlaneView:
    """``out[rows, cols] = block`` into one plane of an nD array (numpy or zarr)."""

    def __init__(self, data: Any, lead: tuple[int, ...]) -> None:
        self.data, self.lead = data, tuple(lead)

    def __setitem__(self, index: Any, value: np.ndarray) -> None:
        self.data[self.lead + tuple(index)] = value


__all__ = ["Plan", "PlaneView", "commit_masks", "next_free_id", "plan_objects", "write_plane"]
