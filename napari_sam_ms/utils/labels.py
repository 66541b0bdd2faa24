"""Turn a set of (possibly overlapping) masks into one label image (numpy only).

Used by the command line (``napari-sam-ms segment``) and the napari widget, so both give the
same labels for the same masks.

Rules:

- Masks are ordered by area, largest first (stable for ties); label 1 is the largest.
- They are painted in that order, so where masks overlap **the smaller mask wins**: an object
  lying inside a larger one (a nucleus in a cell, a wheel on a car) stays visible instead of
  being swallowed.
- A mask left with no pixels of its own (fully covered by smaller ones) gets no label, and the
  remaining labels are renumbered so the ids are exactly 1..N, still in order of area.
  ``return_index=True`` tells which input each label came from.
- Background is 0. The dtype is uint16, or uint32 beyond 65535 labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _mask_of(item: Any) -> np.ndarray:
    if isinstance(item, Mapping):
        if "segmentation" not in item:
            raise ValueError("a mask record needs a 'segmentation' entry")
        seg = item["segmentation"]
        if isinstance(seg, Mapping):
            raise ValueError(
                "masks are run-length encoded: generate them with output_mode='binary_mask'"
            )
        return np.asarray(seg, dtype=bool)
    return np.asarray(item, dtype=bool)


def _area_of(item: Any, mask: np.ndarray) -> int:
    if isinstance(item, Mapping) and "area" in item:
        return int(item["area"])
    return int(np.count_nonzero(mask))


def label_dtype(n_labels: int) -> np.dtype:
    """uint16 when the ids fit, else uint32."""
    return np.dtype(np.uint16 if n_labels <= np.iinfo(np.uint16).max else np.uint32)


def masks_to_labels(
    records_or_masks: Sequence[Any] | np.ndarray,
    shape: tuple[int, int] | None = None,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Assemble masks into a label image: ids 1..N by decreasing area, smaller masks on top.

    Args:
        records_or_masks: the records of :class:`SamAutomaticMaskGenerator` (dicts with a
            boolean ``segmentation`` and optionally ``area``), a list of (H, W) boolean masks,
            or an (N, H, W) array.
        shape: (H, W) of the label image; required when there are no masks, checked otherwise.
        return_index: also return ``index`` with ``index[k]`` = position in the input of the
            mask that became label ``k + 1``.

    Returns:
        The (H, W) label image (uint16 or uint32), and ``index`` (int64) if asked for.
    """
    if isinstance(records_or_masks, np.ndarray) and records_or_masks.ndim == 2:
        records_or_masks = records_or_masks[None]
    items = list(records_or_masks)
    masks = [_mask_of(item) for item in items]
    if not masks and shape is None:
        raise ValueError("no masks given: pass shape=(H, W) for an empty label image")
    want = tuple(int(s) for s in shape) if shape is not None else masks[0].shape
    if len(want) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    for i, mask in enumerate(masks):
        if mask.shape != want:
            raise ValueError(f"mask {i} has shape {mask.shape}, expected {want}")
    areas = np.array(
        [_area_of(item, m) for item, m in zip(items, masks, strict=True)], dtype=np.int64
    )
    order = np.argsort(-areas, kind="stable")

    # Paint largest first with provisional ids 1..M; later (smaller) masks overwrite.
    provisional = np.zeros(want, dtype=np.int64)
    for rank, i in enumerate(order, start=1):
        provisional[masks[i]] = rank
    present = np.zeros(len(order) + 1, dtype=bool)
    present[np.unique(provisional)] = True
    present[0] = False
    ranks = np.flatnonzero(present)  # provisional ids that kept pixels, ascending
    lut = np.zeros(len(order) + 1, dtype=np.int64)
    lut[ranks] = np.arange(1, len(ranks) + 1)
    labels = lut[provisional].astype(label_dtype(len(ranks)))
    if return_index:
        return labels, order[ranks - 1].astype(np.int64)
    return labels


#: What :func:`label_rows` copies from a generator record, when present.
ROW_KEYS = ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")


def label_rows(
    records: Sequence[Mapping[str, Any]], labels: np.ndarray, index: np.ndarray
) -> list[dict[str, Any]]:
    """One row per label id 1..N of ``labels``: its id, the pixels it kept (``visible_area``)
    and the :data:`ROW_KEYS` of the record it came from (``index`` from
    :func:`masks_to_labels`)."""
    visible = np.bincount(labels.ravel(), minlength=len(index) + 1)
    rows = []
    for k, i in enumerate(index, start=1):
        rec = records[int(i)]
        row: dict[str, Any] = {"label": k, "visible_area": int(visible[k])}
        row.update({key: rec[key] for key in ROW_KEYS if key in rec})
        rows.append(row)
    return rows


__all__ = ["label_dtype", "label_rows", "masks_to_labels"]
