"""Whole-image segmentation through tiles: the rules that join the tiles' masks (numpy only).

A tiled run (:class:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator` with
``tile_shape``) collects candidates per tile on the tile's outer area (inner area + halo).
Each candidate keeps its mask as an RLE over that outer area (``crop_boxes``), never over the
plane; its box and point are in plane pixels. :mod:`napari_sam_ms.amg_refine` then applies,
in the first run and in re-filtering alike:

- per tile, :func:`cut_keep`: a mask touching a side of its tile's outer area that lies inside
  the plane is dropped (it may be cut; the tile that holds the object whole gives it);
- across tiles, :func:`dedup_across_tiles`: duplicates from neighbouring tiles' halos are
  removed (box IoU, then mask IoU on the boxes' overlap; for a candidate its tile does not
  own, also the share of its pixels inside the other tile's mask, which catches pieces), the
  candidate of the tile whose inner area holds its box centre (:meth:`TileLayout.owners`)
  first, then the better predicted IoU. So each object is kept once, from one tile, whole.

:func:`~napari_sam_ms.utils.paint.paint_labels` (re-exported here) turns the records into a
label image chunk by chunk (numpy or zarr).
This module imports only ``utils``; ``amg_refine`` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .utils.amg import MaskData, area_from_rle, mask_to_rle, remove_small_regions, rle_to_mask
from .utils.paint import CHUNK, mask_window, paint_labels

EDGE_TOLERANCE = 1  # px: a mask this close to a cut side of its tile touches it
# Planes up to this many pixels get Meta's full-size binary masks from a tiled run; larger
# ones get each mask cropped to its box (``crop_box`` tells where it lies).
FULL_SIZE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class TileLayout:
    """The tiles of a tiled run, boxes (x0, y0, x1, y1) in plane pixels, half-open.

    Attributes:
        plane_shape: (H, W) of the plane.
        tile_shape, halo: (h, w) inner size and margin, as given to the grid.
        zoom: upsampling of every tile before embedding.
        inner: (T, 4) areas the tiles answer for (they partition the plane; row-major grid).
        outer: (T, 4) inner areas grown by the halo, clipped to the plane (the crops).
        cut: (T, 4) bool per outer side (top, left, bottom, right): inside the plane.
    """

    plane_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    zoom: int
    inner: np.ndarray
    outer: np.ndarray
    cut: np.ndarray

    @classmethod
    def from_grid(cls, grid: Any, zoom: int = 1) -> TileLayout:
        """From a :class:`~napari_sam_ms.utils.tiling.TileGrid` (its boxes are y0, x0, y1, x1)."""

        def xyxy(b: Sequence[int]) -> list[int]:
            return [int(b[1]), int(b[0]), int(b[3]), int(b[2])]

        return cls(
            tuple(grid.plane_shape),
            tuple(grid.tile_shape),
            tuple(grid.halo),
            int(zoom),
            np.array([xyxy(t.inner) for t in grid.tiles], np.int64).reshape(-1, 4),
            np.array([xyxy(t.outer) for t in grid.tiles], np.int64).reshape(-1, 4),
            np.array([grid.inner_edges(t) for t in grid.tiles], bool).reshape(-1, 4),
        )

    def __len__(self) -> int:
        return len(self.inner)

    def owners(self, boxes: np.ndarray) -> np.ndarray:
        """The tile whose inner area holds each box's centre ((N, 4) inclusive boxes)."""
        boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
        cx = np.floor((boxes[:, 0] + boxes[:, 2] + 1) / 2)
        cy = np.floor((boxes[:, 1] + boxes[:, 3] + 1) / 2)
        xs, ys = np.unique(self.inner[:, 0]), np.unique(self.inner[:, 1])
        col = np.clip(np.searchsorted(xs, cx, side="right") - 1, 0, len(xs) - 1)
        row = np.clip(np.searchsorted(ys, cy, side="right") - 1, 0, len(ys) - 1)
        return (row * len(xs) + col).astype(np.int64)


def cut_keep(boxes: np.ndarray, tile_ids: np.ndarray, layout: TileLayout) -> np.ndarray:
    """False for masks touching (within :data:`EDGE_TOLERANCE`) a side of their tile's outer
    area that lies inside the plane; boxes are inclusive, in plane pixels."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    ids = np.asarray(tile_ids, np.int64)
    ox0, oy0, ox1, oy1 = layout.outer[ids].T
    top, left, bottom, right = layout.cut[ids].T
    tol = EDGE_TOLERANCE
    touches = (
        (top & (boxes[:, 1] <= oy0 + tol))
        | (left & (boxes[:, 0] <= ox0 + tol))
        | (bottom & (boxes[:, 3] >= oy1 - 1 - tol))
        | (right & (boxes[:, 2] >= ox1 - 1 - tol))
    )
    return ~touches


def local_box(box: Sequence[int], crop_box: Sequence[int]) -> list[int]:
    """A plane box (x0, y0, x1, y1) in the pixels of a crop starting at ``crop_box[:2]``."""
    return [int(box[0] - crop_box[0]), int(box[1] - crop_box[1]),
            int(box[2] - crop_box[0]), int(box[3] - crop_box[1])]  # fmt: skip


def box_mask(data: MaskData, i: int) -> np.ndarray:
    """Candidate ``i``'s mask inside its own (inclusive) box, decoded from its crop RLE."""
    return rle_to_mask(data["rles"][i], local_box(data["boxes"][i], data["crop_boxes"][i]))


def dedup_across_tiles(data: MaskData, layout: TileLayout, iou_thresh: float) -> np.ndarray:
    """Which candidates survive duplicate removal between tiles (bool, input order).

    Candidates are taken owners first (the tile whose inner area holds the box centre made
    them), then by predicted IoU (stable). One is dropped when a kept candidate of another
    tile has a box IoU or a mask IoU above ``iou_thresh`` with it; a guest (a candidate its
    tile does not own) also when more than ``iou_thresh`` of its pixels lie in such a
    candidate: near the edge of a tile's outer area the model proposes pieces of objects its
    neighbour holds whole, which a piece's IoU with the whole (~0.5) lets through. Only
    candidates in some other tile's outer area are compared, and only with those tiles'.
    """
    n = len(data["boxes"])
    keep = np.ones(n, bool)
    if n == 0:
        return keep
    boxes = np.asarray(data["boxes"], np.int64)
    tiles = np.asarray(data["tile_ids"], np.int64)
    owned = layout.owners(boxes) == tiles
    order = np.lexsort((-np.asarray(data["iou_preds"], np.float64), ~owned))
    kept: dict[int, list[int]] = {}
    cache: dict[int, np.ndarray] = {}
    areas = [area_from_rle(r) for r in data["rles"]]
    for i in order:
        b, guest = boxes[i], not owned[i]
        for t in _other_tiles(b, int(tiles[i]), layout):
            near = np.asarray(kept.get(t, ()), np.int64)
            c = boxes[near]
            near = near[
                (c[:, 0] <= b[2]) & (b[0] <= c[:, 2]) & (c[:, 1] <= b[3]) & (b[1] <= c[:, 3])
            ]
            if any(_duplicates(data, i, int(j), areas, cache, iou_thresh, guest) for j in near):
                keep[i] = False
                break
        if keep[i]:
            kept.setdefault(int(tiles[i]), []).append(int(i))
    return keep


def _other_tiles(box: np.ndarray, own: int, layout: TileLayout) -> list[int]:
    """Tiles other than ``own`` whose outer area meets the inclusive ``box``."""
    o = layout.outer
    meets = (o[:, 0] <= box[2]) & (box[0] < o[:, 2]) & (o[:, 1] <= box[3]) & (box[1] < o[:, 3])
    meets[own] = False
    return [int(t) for t in np.flatnonzero(meets)]


def _duplicates(
    data: MaskData, i: int, j: int, areas: list[int], cache: dict, thresh: float, guest: bool
) -> bool:
    """Whether candidate ``i`` repeats kept candidate ``j``: box or mask IoU above
    ``thresh``, or for a ``guest`` more than ``thresh`` of its own pixels inside ``j``."""
    a, b = data["boxes"][i], data["boxes"][j]
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    if x0 > x1 or y0 > y1:
        return False
    inter_box = (x1 - x0 + 1) * (y1 - y0 + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    if inter_box / (area_a + area_b - inter_box) > thresh:
        return True
    for k in (i, j):
        if k not in cache:
            cache[k] = box_mask(data, k)
    mi = cache[i][y0 - a[1] : y1 - a[1] + 1, x0 - a[0] : x1 - a[0] + 1]
    mj = cache[j][y0 - b[1] : y1 - b[1] + 1, x0 - b[0] : x1 - b[0] + 1]
    inter = int(np.count_nonzero(mi & mj))
    union = areas[i] + areas[j] - inter
    if guest and areas[i] > 0 and inter / areas[i] > thresh:
        return True
    return union > 0 and inter / union > thresh


def grid_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, cell: int = 256
) -> np.ndarray:
    """:func:`napari_sam_ms.utils.amg.nms` (same IoU, order and result) comparing only boxes
    that share a cell of a ``cell``-pixel grid, for the many boxes of a large plane."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    b = boxes[order]
    cells: dict[tuple[int, int], list[int]] = {}
    for k, (x0, y0, x1, y1) in enumerate(b):
        for cy in range(int(y0) // cell, int(y1) // cell + 1):
            for cx in range(int(x0) // cell, int(x1) // cell + 1):
                cells.setdefault((cy, cx), []).append(k)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), bool)
    kept = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(len(b)):
            if suppressed[k]:
                continue
            kept.append(k)
            x0, y0, x1, y1 = b[k]
            near = {m for cy in range(int(y0) // cell, int(y1) // cell + 1)
                    for cx in range(int(x0) // cell, int(x1) // cell + 1)
                    for m in cells[(cy, cx)] if m > k}  # fmt: skip
            rest = np.array(sorted(m for m in near if not suppressed[m]), np.int64)
            if rest.size == 0:
                continue
            zero = np.float32(0)
            w = np.maximum(zero, np.minimum(x1, b[rest, 2]) - np.maximum(x0, b[rest, 0]))
            h = np.maximum(zero, np.minimum(y1, b[rest, 3]) - np.maximum(y0, b[rest, 1]))
            inter = w * h
            iou = inter / (areas[k] + areas[rest] - inter)
            suppressed[rest[iou.astype(np.float64) > iou_threshold]] = True
    return order[np.asarray(kept, np.int64)].astype(np.int64)


class PlaneBits:
    """A boolean plane stored as :data:`CHUNK`-sized blocks made only where set."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self._chunks: dict[tuple[int, int], np.ndarray] = {}

    def _parts(self, y0: int, x0: int, y1: int, x1: int):
        for cy in range(y0 // CHUNK, (y1 - 1) // CHUNK + 1):
            for cx in range(x0 // CHUNK, (x1 - 1) // CHUNK + 1):
                ys, xs = max(y0, cy * CHUNK), max(x0, cx * CHUNK)
                ye, xe = min(y1, (cy + 1) * CHUNK), min(x1, (cx + 1) * CHUNK)
                local = (
                    slice(ys - cy * CHUNK, ye - cy * CHUNK),
                    slice(xs - cx * CHUNK, xe - cx * CHUNK),
                )
                yield (cy, cx), local, (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))

    def count_and(self, y0: int, x0: int, mask: np.ndarray) -> int:
        """Pixels set both here and in ``mask`` placed at (y0, x0)."""
        y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        total = 0
        for key, local, part in self._parts(y0, x0, y1, x1):
            chunk = self._chunks.get(key)
            if chunk is not None:
                total += int(np.count_nonzero(chunk[local] & mask[part]))
        return total

    def add(self, y0: int, x0: int, mask: np.ndarray) -> None:
        """Set the pixels of ``mask`` placed at (y0, x0)."""
        y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        for key, local, part in self._parts(y0, x0, y1, x1):
            if key not in self._chunks:
                h = min(CHUNK, self.shape[0] - key[0] * CHUNK)
                w = min(CHUNK, self.shape[1] - key[1] * CHUNK)
                self._chunks[key] = np.zeros((h, w), bool)
            self._chunks[key][local] |= mask[part]


def postprocess_small_regions_tiled(data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
    """:func:`~napari_sam_ms.amg_refine.postprocess_small_regions` for crop RLEs: holes and
    islands per mask in its crop, boxes back in plane pixels, then :func:`grid_nms`."""
    if len(data["rles"]) == 0:
        return data
    masks, boxes, scores = [], [], []
    for rle, crop in zip(data["rles"], data["crop_boxes"], strict=True):
        mask, holes = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
        mask, islands = remove_small_regions(mask, min_area, mode="islands")
        masks.append(mask)
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box = [xs[0], ys[0], xs[-1], ys[-1]] if len(xs) else [0, 0, 0, 0]
        boxes.append(np.asarray(box, np.int64) + [crop[0], crop[1], crop[0], crop[1]])
        scores.append(float(not (holes or islands)))
    keep = grid_nms(np.asarray(boxes), np.asarray(scores, np.float32), nms_thresh)
    for i in keep:
        if scores[i] == 0.0:
            data["rles"][i] = mask_to_rle(masks[i][None], compact=True)[0]
            data["boxes"][i] = boxes[i]
    data.filter(keep)
    return data


# --------------------------------------------------------------------------- canvas
def canvas_shape(tile_shape: Sequence[int], halo: Sequence[int], zoom: int) -> tuple[int, int]:
    """(h, w) of the image every tile is embedded as: the unclipped outer size x zoom."""
    return ((tile_shape[0] + 2 * halo[0]) * zoom, (tile_shape[1] + 2 * halo[1]) * zoom)


def tile_canvas(rgb: np.ndarray, shape: Sequence[int], model: Any) -> np.ndarray:
    """A tile's (zoomed) RGB at the top left of a ``shape`` canvas padded with the model's
    pixel mean (what SAM pads with), so all tiles share one scale."""
    mean = getattr(model.pixel_mean, "asnumpy", lambda: model.pixel_mean)()
    out = np.empty((int(shape[0]), int(shape[1]), 3), np.uint8)
    out[...] = np.clip(np.round(np.asarray(mean, np.float64).reshape(-1)), 0, 255)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    return out


def check_canvas(embedding: Any, shape: Sequence[int]) -> Any:
    """``embedding`` when it is of a ``shape`` tile canvas, else a ValueError saying so."""
    if tuple(embedding.original_size) != tuple(shape):
        raise ValueError(
            f"embed(tile) must embed the tile's canvas {tuple(shape)} (tile.outer zoomed at "
            f"the top left, as TiledPredictor.embed_tile), got {embedding.original_size}"
        )
    return embedding


def native_logits(logits: np.ndarray, size: Sequence[int], zoom: int) -> np.ndarray:
    """Canvas logits (..., H, W) -> the tile's (..., h, w) at native resolution: its content
    cropped from the top left, ``zoom x zoom`` blocks averaged."""
    h, w = int(size[0]), int(size[1])
    crop = np.asarray(logits)[..., : h * zoom, : w * zoom]
    if zoom == 1:
        return crop
    return crop.reshape(*crop.shape[:-2], h, zoom, w, zoom).mean(axis=(-3, -1))


# --------------------------------------------------------------------------- output
def record_segmentation(
    data: MaskData, i: int, output_mode: str, plane_shape: Sequence[int] | None
) -> tuple[Any, list[int]]:
    """Candidate ``i``'s ``segmentation`` and ``crop_box`` (x, y, w, h) in a record.

    With ``plane_shape``: an (H, W) mask and the tile's outer box as crop box (Meta's form);
    None: the mask cropped to its box, which is then the crop box. RLE modes (uncompressed;
    the caller compresses ``coco_rle``) encode the same mask.
    """
    crop = [int(v) for v in data["crop_boxes"][i]]
    if plane_shape is not None:
        h, w = (int(v) for v in data["rles"][i]["size"])
        mask = np.zeros((int(plane_shape[0]), int(plane_shape[1])), bool)
        mask[crop[1] : crop[1] + h, crop[0] : crop[0] + w] = rle_to_mask(data["rles"][i])
        frame = [crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]]
    else:
        mask = box_mask(data, i)
        x0, y0 = int(data["boxes"][i][0]), int(data["boxes"][i][1])
        frame = [x0, y0, mask.shape[1], mask.shape[0]]
    if output_mode == "binary_mask":
        return mask, frame
    return mask_to_rle(mask[None])[0], frame


__all__ = [
    "CHUNK",
    "EDGE_TOLERANCE",
    "FULL_SIZE_LIMIT",
    "PlaneBits",
    "TileLayout",
    "box_mask",
    "canvas_shape",
    "check_canvas",
    "cut_keep",
    "dedup_across_tiles",
    "grid_nms",
    "local_box",
    "mask_window",
    "paint_labels",
    "native_logits",
    "postprocess_small_regions_tiled",
    "record_segmentation",
    "tile_canvas",
]
