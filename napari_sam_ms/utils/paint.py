"""Paint mask records into a label image chunk by chunk (numpy only), for planes whose label
image is a zarr array larger than memory.

Same rules as :func:`napari_sam_ms.utils.labels.masks_to_labels` (ids 1..N by decreasing
area, smaller masks on top, masks left with no pixels get no id), and records may hold their
mask full-size or cropped (tiled runs on large planes: ``crop_box`` says where it lies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .amg import rle_to_mask
from .labels import label_dtype

CHUNK = 1024  # side of the chunks painted at once (and of amg_tiles' overlap bitmap)


def mask_window(
    record: Mapping[str, Any], plane_shape: Sequence[int]
) -> tuple[int, int, np.ndarray]:
    """(y0, x0, mask) of one record: its mask inside its box, wherever it lies in the plane.

    ``segmentation`` is a bool array or an uncompressed RLE, full-size (H, W) or over its
    ``crop_box`` (x, y, w, h) (tiled runs on large planes).
    """
    seg = record["segmentation"]
    x0, y0, bw, bh = (int(v) for v in record["bbox"])
    box = [x0, y0, x0 + bw, y0 + bh]
    plane = (int(plane_shape[0]), int(plane_shape[1]))
    if isinstance(seg, Mapping):
        if not isinstance(seg.get("counts"), (list, np.ndarray)):
            raise ValueError(
                "coco_rle masks cannot be painted: use binary_mask or uncompressed_rle"
            )
        size = tuple(int(v) for v in seg["size"])
    else:
        seg = np.asarray(seg, bool)
        size = seg.shape
    cx, cy = (0, 0) if size == plane else (int(v) for v in record["crop_box"][:2])
    local = [box[0] - cx, box[1] - cy, box[2] - cx, box[3] - cy]
    if isinstance(seg, Mapping):
        return y0, x0, rle_to_mask(seg, local)
    return y0, x0, seg[local[1] : local[3] + 1, local[0] : local[2] + 1]


def paint_labels(
    records: Sequence[Mapping[str, Any]],
    plane_shape: Sequence[int],
    out: Any | Callable[[np.dtype], Any] | None = None,
    chunk: int = CHUNK,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A label image of records, as :func:`napari_sam_ms.utils.labels.masks_to_labels` makes it
    (ids 1..N by decreasing area, smaller masks on top, masks left with no pixels get no id),
    painted chunk by chunk so it can go to a zarr array larger than memory.

    Args:
        records: generator records (full-size or cropped masks, see :func:`mask_window`).
        plane_shape: (H, W).
        out: an array to write into (numpy or zarr, its dtype wide enough), a callable
            ``out(dtype)`` making one, or None for a new numpy array.
        chunk: side of the chunks painted at once.

    Returns:
        (labels, index, visible): ``index[k]`` is the record that became label ``k + 1``;
        ``visible[k]`` its pixels in the label image.
    """
    H, W = (int(v) for v in plane_shape)
    windows = [mask_window(r, (H, W)) for r in records]
    areas = np.array([int(r["area"]) for r in records], np.int64)
    order = np.argsort(-areas, kind="stable")
    spans = np.array([[y, x, y + m.shape[0], x + m.shape[1]] for y, x, m in windows], np.int64)
    spans = spans.reshape(-1, 4)
    counts = np.zeros(len(order) + 1, np.int64)
    for _ in _paint_chunks(windows, order, spans, (H, W), chunk, counts, None):
        pass
    ranks = np.flatnonzero(counts[1:]) + 1
    lut = np.zeros(len(order) + 1, np.int64)
    lut[ranks] = np.arange(1, len(ranks) + 1)
    dtype = label_dtype(len(ranks))
    if out is None:
        out = np.zeros((H, W), dtype)
    elif callable(out):
        out = out(dtype)
    for (ys, xs), block in _paint_chunks(windows, order, spans, (H, W), chunk, None, lut):
        out[ys, xs] = block.astype(dtype)
    return out, order[ranks - 1].astype(np.int64), counts[ranks]


def _paint_chunks(windows, order, spans, shape, chunk, counts, lut):
    """Yield ((rows, cols), block) of provisional ranks (or final ids through ``lut``) per
    chunk; with ``counts``, add each rank's visible pixels to it."""
    H, W = shape
    rank_of = np.empty(len(order), np.int64)
    rank_of[order] = np.arange(1, len(order) + 1)
    for y in range(0, H, chunk):
        for x in range(0, W, chunk):
            ye, xe = min(H, y + chunk), min(W, x + chunk)
            block = np.zeros((ye - y, xe - x), np.int64)
            hit = (
                np.flatnonzero(
                    (spans[:, 0] < ye) & (spans[:, 2] > y) & (spans[:, 1] < xe) & (spans[:, 3] > x)
                )
                if len(spans)
                else np.zeros(0, np.int64)
            )
            for i in hit[np.argsort(rank_of[hit], kind="stable")]:
                y0, x0, m = windows[i]
                sy, sx = max(y, y0), max(x, x0)
                ey, ex = min(ye, y0 + m.shape[0]), min(xe, x0 + m.shape[1])
                part = m[sy - y0 : ey - y0, sx - x0 : ex - x0]
                block[sy - y : ey - y, sx - x : ex - x][part] = rank_of[i]
            if counts is not None:
                counts += np.bincount(block.ravel(), minlength=len(counts))
            if lut is not None:
                yield (slice(y, ye), slice(x, xe)), lut[block]
            else:
                yield None


__all__ = ["CHUNK", "mask_window", "paint_labels"]
