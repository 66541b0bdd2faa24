"""Helpers of the automatic mask generator, in numpy (mirrors ``segment_anything/utils/amg.py``).

Same algorithms and conventions as Meta's code, so results can be compared one to one:

- boxes are (x0, y0, x1, y1) with inclusive pixel indices as :func:`batched_mask_to_box`
  returns them (an empty mask gives [0, 0, 0, 0]);
- RLEs are uncompressed COCO run lengths over the mask read column by column (Fortran
  order), starting with the number of 0 pixels;
- :func:`nms` behaves like ``torchvision.ops.nms`` (float32 IoU, suppress IoU > threshold),
  with a stable sort so ties keep their input order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any

import numpy as np

Box = Sequence[int]


class MaskData:
    """Per-mask arrays and lists of equal length, filtered and concatenated together."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            _check_item(key, value)
        self._stats: dict[str, Any] = dict(kwargs)

    def __setitem__(self, key: str, item: Any) -> None:
        _check_item(key, item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def __len__(self) -> int:
        """Number of masks (length of the first entry; 0 when empty)."""
        for value in self._stats.values():
            if value is not None:
                return len(value)
        return 0

    def keys(self):
        return self._stats.keys()

    def items(self):
        return self._stats.items()

    def filter(self, keep: np.ndarray) -> None:
        """Keep the entries selected by a boolean mask or an index array (in that order)."""
        keep = np.asarray(keep)
        if keep.dtype != np.bool_:
            keep = keep.astype(np.int64, copy=False)
        for key, value in self._stats.items():
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                self._stats[key] = value[keep]
            elif keep.dtype == np.bool_:
                self._stats[key] = [item for item, k in zip(value, keep, strict=True) if k]
            else:
                self._stats[key] = [value[i] for i in keep]

    def cat(self, new_stats: MaskData) -> None:
        """Append the entries of another MaskData.

        Arrays and lists are copied, the items of lists (RLE dicts) are shared, not
        deep-copied as in Meta's code: nothing here edits an RLE in place (cleanup replaces
        it).
        """
        for key, value in new_stats.items():
            if key not in self._stats or self._stats[key] is None:
                self._stats[key] = None if value is None else value.copy()
            elif isinstance(value, np.ndarray):
                self._stats[key] = np.concatenate([self._stats[key], value], axis=0)
            else:
                self._stats[key] = self._stats[key] + list(value)


def _check_item(key: str, value: Any) -> None:
    if value is not None and not isinstance(value, (list, np.ndarray)):
        raise TypeError(f"MaskData[{key!r}] must be a list or numpy array, got {type(value)}")


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: Box, orig_box: Box, atol: float = 20.0
) -> np.ndarray:
    """True for boxes (in crop coordinates) within ``atol`` of an edge of the crop that is
    not also an edge of the original image."""
    crop = np.asarray(crop_box, np.float32)[None, :]
    orig = np.asarray(orig_box, np.float32)[None, :]
    boxes = uncrop_boxes_xyxy(np.asarray(boxes), crop_box).astype(np.float32)
    near_crop_edge = np.abs(boxes - crop) <= atol
    near_image_edge = np.abs(boxes - orig) <= atol
    return np.any(near_crop_edge & ~near_image_edge, axis=1)


def box_xyxy_to_xywh(box_xyxy: np.ndarray) -> np.ndarray:
    """(..., 4) boxes x0, y0, x1, y1 -> x, y, w, h (a new array)."""
    box = np.array(box_xyxy, copy=True)
    box[..., 2] = box[..., 2] - box[..., 0]
    box[..., 3] = box[..., 3] - box[..., 1]
    return box


def batch_iterator(batch_size: int, *args: Sequence) -> Iterator[list]:
    """Yield ``[a[i:i + batch_size] for a in args]`` over equally long sequences."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("batch_iterator needs one or more inputs of the same length")
    n = len(args[0])
    for start in range(0, n, batch_size):
        yield [a[start : start + batch_size] for a in args]


def mask_to_rle(masks: np.ndarray, compact: bool = False) -> list[dict[str, Any]]:
    """Encode (B, H, W) binary masks as uncompressed RLEs (COCO's column-major counts).

    Args:
        compact: counts as int32 arrays instead of lists of ints (whole-image mode keeps
            thousands of candidate RLEs; :func:`rle_as_lists` gives Meta's form back).
    """
    masks = np.asarray(masks, dtype=bool)
    b, h, w = masks.shape
    if h * w == 0:
        return [{"size": [h, w], "counts": [0]} for _ in range(b)]
    dtype = np.int32 if compact and h * w < 2**31 else np.int64
    out = []
    for first in range(0, b, 16):  # a few masks at a time: the change lists can be long
        flat = masks[first : first + 16].transpose(0, 2, 1).reshape(-1, h * w)
        # flat indices of the changes, in order
        mask_of, index = np.divmod(np.flatnonzero(flat[:, 1:] != flat[:, :-1]), max(1, h * w - 1))
        index += 1
        bounds = np.searchsorted(mask_of, np.arange(len(flat) + 1))
        for m in range(len(flat)):
            change = index[bounds[m] : bounds[m + 1]]
            start = [0, 0] if flat[m, 0] else [0]
            counts = np.diff(np.concatenate((start, change, [h * w])).astype(dtype))
            out.append({"size": [h, w], "counts": counts if compact else counts.tolist()})
    return out


def rle_as_lists(rle: dict[str, Any]) -> dict[str, Any]:
    """An RLE with its counts as a list of ints (Meta's uncompressed RLE)."""
    return {"size": list(rle["size"]), "counts": np.asarray(rle["counts"], np.int64).tolist()}


def rle_to_mask(rle: dict[str, Any], box: Sequence[int] | None = None) -> np.ndarray:
    """Decode an uncompressed RLE into an (H, W) bool array, or only its part inside
    ``box`` = (x0, y0, x1, y1) (inclusive, as :func:`batched_mask_to_box`): the columns of
    the box are decoded, not the whole image."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {counts.sum()}, not {h}x{w} = {h * w} pixels")
    if box is None:
        values = (np.arange(len(counts)) % 2).astype(bool)
        return np.ascontiguousarray(np.repeat(values, counts).reshape(w, h).T)
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        raise ValueError(f"box {tuple(box)} is not inside the {h}x{w} mask")
    lo, hi = x0 * h, (x1 + 1) * h  # column-major: the pixels of columns x0..x1
    ends = np.cumsum(counts)
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends - counts, hi, side="left"))
    runs = np.minimum(ends[first:last], hi) - np.maximum(ends[first:last] - counts[first:last], lo)
    values = (np.arange(first, last) % 2).astype(bool)
    columns = np.repeat(values, runs).reshape(x1 - x0 + 1, h).T
    return np.ascontiguousarray(columns[y0 : y1 + 1])


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(np.sum(rle["counts"][1::2], dtype=np.int64))


def calculate_stability_score(
    masks: np.ndarray, mask_threshold: float, threshold_offset: float
) -> np.ndarray:
    """IoU between the masks thresholded at ``threshold +/- offset``, as float32 (B,).

    The high-threshold mask lies inside the low one, so IoU = area(high) / area(low). Pixel
    counts are summed per row in int16 (int32 for rows of 32768 pixels or more) and per mask
    in int32, as Meta's code, never materialising int64 copies of the masks. An empty low
    mask gives NaN.
    """
    masks = np.asarray(masks)
    high = np.float32(mask_threshold + threshold_offset)
    low = np.float32(mask_threshold - threshold_offset)
    row_dtype = np.int16 if masks.shape[-1] < 2**15 else np.int32
    intersections = (masks > high).sum(-1, dtype=row_dtype).sum(-1, dtype=np.int32)
    unions = (masks > low).sum(-1, dtype=row_dtype).sum(-1, dtype=np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersections.astype(np.float32) / unions.astype(np.float32)


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) evenly spaced in [0, 1]^2, at the centres of n x n cells."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """Point grids of crop layers 0..n_layers; layer i has ``n_per_side / scale**i`` per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (x0, y0, x1, y1) of all layers and their layer indices.

    Layer 0 is the whole image; layer i has (2**i)**2 overlapping crops.
    """
    im_h, im_w = im_size[:2]
    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: Box) -> np.ndarray:
    """Shift (..., 4) boxes from crop to image coordinates."""
    x0, y0 = crop_box[0], crop_box[1]
    return np.asarray(boxes) + np.array([x0, y0, x0, y0])


def uncrop_points(points: np.ndarray, crop_box: Box) -> np.ndarray:
    """Shift (..., 2) points from crop to image coordinates."""
    return np.asarray(points) + np.array([crop_box[0], crop_box[1]])


def uncrop_masks(masks: np.ndarray, crop_box: Box, orig_h: int, orig_w: int) -> np.ndarray:
    """Zero-pad (..., h, w) crop masks to the (orig_h, orig_w) image."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad = [(0, 0)] * (masks.ndim - 2) + [(y0, orig_h - y1), (x0, orig_w - x1)]
    return np.pad(masks, pad)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than
    ``area_thresh`` (8-connectivity); return the mask and whether it changed.

    When every island is small, the largest one is kept.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = (np.asarray(mask, bool) ^ correct_holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if correct_holes:
        fill = np.concatenate(([0], small))
    else:
        fill = np.setdiff1d(np.arange(1, n_labels), small)
        if fill.size == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, fill), True


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Compress an uncompressed RLE with pycocotools (``counts`` as a JSON-ready str)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:
        raise ImportError(
            "output_mode='coco_rle' needs pycocotools: pip install pycocotools "
            "(or pip install 'napari-sam-ms[coco]')"
        ) from err
    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def batched_mask_to_box(masks: np.ndarray) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) around (..., H, W) masks, inclusive indices, int64 (..., 4).

    An empty mask gives [0, 0, 0, 0].
    """
    masks = np.asarray(masks, dtype=bool)
    lead = masks.shape[:-2]
    if masks.size == 0:
        return np.zeros(lead + (4,), np.int64)
    h, w = masks.shape[-2:]
    rows = masks.any(axis=-1)  # (..., H)
    cols = masks.any(axis=-2)  # (..., W)
    top = rows.argmax(axis=-1)
    bottom = h - 1 - rows[..., ::-1].argmax(axis=-1)
    left = cols.argmax(axis=-1)
    right = w - 1 - cols[..., ::-1].argmax(axis=-1)
    out = np.stack([left, top, right, bottom], axis=-1).astype(np.int64)
    out[~rows.any(axis=-1)] = 0
    return out


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas (x1 - x0) * (y1 - y0) of (N, 4) boxes, in their dtype."""
    boxes = np.asarray(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression with ``torchvision.ops.nms`` semantics.

    Boxes are taken in decreasing score order (a stable sort: equal scores keep their input
    order); each kept box suppresses the later ones whose IoU with it exceeds
    ``iou_threshold``. IoU is computed in float32 with area (x1 - x0) * (y1 - y0), as
    torchvision does. Returns the kept indices, highest score first (int64).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores)
    if scores.shape != (len(boxes),):
        raise ValueError(f"need one score per box, got {scores.shape} for {len(boxes)} boxes")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    x0, y0, x1, y1 = boxes[order].T
    areas = (x1 - x0) * (y1 - y0)
    n = len(order)
    suppressed = np.zeros(n, dtype=bool)
    zero = np.float32(0)
    kept = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            kept.append(i)
            rest = np.flatnonzero(~suppressed[i + 1 :]) + i + 1
            if rest.size == 0:
                break
            w = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            h = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            # torchvision compares the float32 IoU with the threshold as a double.
            suppressed[rest[iou.astype(np.float64) > iou_threshold]] = True
    return order[np.asarray(kept, dtype=np.int64)].astype(np.int64)


__all__ = [
    "MaskData",
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_area",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "nms",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]
