"""Prompts on planes larger than the model's input, at native resolution, through tiles.

:class:`TiledPredictor` cuts the plane into a :class:`~napari_sam_ms.utils.tiling.TileGrid`
(inner tiles plus a halo) and embeds a tile only when a prompt needs it; embeddings are
cached per tile in memory and on disk (:meth:`EmbeddingCache.get_part`). Coordinates in and
out are full-plane pixels, ``(x, y)`` for prompts as Meta's API.

How a tile is embedded: its outer area is read from the :class:`PlaneSource` (with the
plane's contrast limits), upsampled ``zoom`` times, and placed at the top left of a canvas of
the unclipped outer size (``(tile + 2 * halo) * zoom``, by default exactly the model input),
the rest filled with the model's mean pixel (which the model normalises to 0, as SAM's own
padding). So every tile is seen at the same scale, also at the plane's edges. Masks are
computed as logits on the canvas, cropped to the tile's content, averaged over ``zoom x zoom``
blocks back to native pixels and thresholded.

Prompt -> tile: a click set goes to the tile whose inner area holds the first foreground
point (every point must lie in its outer area); a box to :meth:`TileGrid.tile_covering`. A
box that no tile covers is answered from a window centred on it when that fits the model
input, else from the region around it read at 1/2, 1/4... resolution (``note`` says so).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import cv2
import numpy as np

from .embedding_cache import EmbeddingCache
from .predictor import ImageEmbedding
from .utils.plane_source import PlaneSource
from .utils.tiling import (
    GRID_LAYOUT,
    Box,
    Tile,
    TileGrid,
    as_pair,
    check_patch,
    default_halo,
    default_tile_shape,
    model_patch,
)


class TiledPrediction(NamedTuple):
    """Masks of one object from one tile (or window), as a crop of the plane.

    Attributes:
        masks: (C, h, w) bool masks of the crop, native resolution.
        box: (y0, x0, y1, x1) of the crop in the plane.
        scores: (C,) predicted IoUs.
        low_res_logits: (C, 256, 256) low-res logits in the tile's model frame.
        tile: the tile that answered (None: a window around a box).
        note: one line for the user ("" when answered from a tile at native resolution).
    """

    masks: np.ndarray
    box: Box
    scores: np.ndarray
    low_res_logits: np.ndarray
    tile: Tile | None
    note: str

    def paste(self, target: np.ndarray, mask: int | None = None, value: Any = True) -> np.ndarray:
        """Write ``value`` where mask ``mask`` (default: the best scored) is set, in place.

        Args:
            target: a full-plane (H, W) array (numpy, or anything with numpy item assignment).
            mask: which of the C masks; None = the highest score.
        """
        i = int(np.argmax(self.scores)) if mask is None else int(mask)
        y0, x0, y1, x1 = self.box
        region = np.asarray(target[y0:y1, x0:x1])
        target[y0:y1, x0:x1] = np.where(self.masks[i], value, region)
        return target


class TiledPredictor:
    """A SamPredictor-like object answering full-plane prompts from tiles.

    Args:
        predictor: a :class:`~napari_sam_ms.predictor.SamPredictor` (or mirror-averaged one).
        tile_shape: inner tile size (h, w); None: the model input at ``zoom`` minus the halo
            (:func:`~napari_sam_ms.utils.tiling.default_tile_shape`).
        halo: margin on each side; None: 1/8 of the zoomed model input (SAM: 128, micro: 32).
        zoom: 1, 2 or 4: tiles are upsampled this many times before embedding.
        cache: embeddings per tile; None: in memory only (a new :class:`EmbeddingCache`).
        model_id: the model's cache id (``loader.embedding_id``); "" keeps tiles off disk.
        invert: embed ``255 - rgb`` (dark objects on a bright background).
    """

    def __init__(
        self,
        predictor: Any,
        tile_shape: tuple[int, int] | int | None = None,
        halo: tuple[int, int] | int | None = None,
        zoom: int = 1,
        cache: EmbeddingCache | None = None,
        model_id: str = "",
        invert: bool = False,
    ) -> None:
        self.predictor = predictor
        model = predictor.model
        self.model_input = int(model.img_size)
        self.halo = default_halo(self.model_input, zoom) if halo is None else as_pair(halo, "halo")
        if tile_shape is None:
            tile_shape = default_tile_shape(self.model_input, self.halo, zoom)
        self.tile_shape = as_pair(tile_shape, "tile_shape")
        self.zoom = int(zoom)
        check_patch(self.tile_shape, self.zoom, model_patch(model))
        TileGrid((1, 1), self.tile_shape, self.halo)  # checks the halo against the tile
        self.cache = cache if cache is not None else EmbeddingCache(cache_dir=False)
        self.model_id = str(model_id) + str(getattr(predictor, "embedding_suffix", ""))
        self.invert = bool(invert)
        self.threshold = float(getattr(model, "mask_threshold", 0.0))
        mean = getattr(model, "pixel_mean", None)
        mean = np.zeros(3) if mean is None else _numpy(mean).reshape(-1)
        self.pad_value = np.clip(np.round(mean), 0, 255).astype(np.uint8)
        self.embedded = 0  # tiles embedded by the model (cache misses), for tests and benchmarks
        self.source: PlaneSource | None = None
        self.grid: TileGrid | None = None
        self._held: tuple | None = None  # what the predictor holds now

    @property
    def kind(self) -> str:
        """The cache's name for this tiling (grid layout, tile, halo, zoom, inversion)."""
        (th, tw), (hy, hx) = self.tile_shape, self.halo
        name = f"tiles{GRID_LAYOUT}_{th}x{tw}_h{hy}x{hx}_z{self.zoom}"
        return name + ("_inv" if self.invert else "")

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """(h, w) of the image each tile is embedded as: the unclipped outer size x zoom."""
        return (
            (self.tile_shape[0] + 2 * self.halo[0]) * self.zoom,
            (self.tile_shape[1] + 2 * self.halo[1]) * self.zoom,
        )

    # ----------------------------------------------------------------- image
    def set_image(self, data: Any, channel_axis: int | None = None) -> None:
        """Use a plane (a :class:`PlaneSource` or anything it takes); nothing is embedded."""
        self.source = PlaneSource.of(data, channel_axis)
        self.grid = TileGrid(self.source.shape, self.tile_shape, self.halo)
        self._held = None

    @property
    def is_image_set(self) -> bool:
        return self.source is not None

    def reset_image(self) -> None:
        """Forget the plane."""
        self.source, self.grid, self._held = None, None, None

    def _require(self) -> tuple[PlaneSource, TileGrid]:
        if self.source is None or self.grid is None:
            raise RuntimeError("no image is set: call set_image(plane) before predicting")
        return self.source, self.grid

    def canvas(self, region: Box, zoom: int | None = None) -> np.ndarray:
        """The model image of a plane region: read, zoomed, padded to :attr:`canvas_shape`."""
        source, _ = self._require()
        z = self.zoom if zoom is None else zoom
        rgb = source.model_input(region, zoom=z, invert=self.invert)
        out = np.empty((*self.canvas_shape, 3), np.uint8)
        out[...] = self.pad_value
        out[: rgb.shape[0], : rgb.shape[1]] = rgb
        return out

    def embed_tile(self, tile: Tile) -> ImageEmbedding:
        """The embedding of ``tile`` (cached; computed only on a miss).

        The embedding is of :meth:`canvas` (``tile.outer`` zoomed at the top left of the
        canvas): a plane point (x, y) is ``((x - outer.x0) * zoom, (y - outer.y0) * zoom)``
        in its ``original_size`` frame (see :meth:`to_tile_frame`).
        """
        _, grid = self._require()
        if grid.tile(tile.index) != tile:
            raise ValueError(f"{tile} is not a tile of this plane's grid {grid}")
        args = self.part_args(tile)
        emb = self.cache.get_part(*args)
        if emb is None:
            self.predictor.set_image(self.canvas(tile.outer))
            emb = self.predictor.embedding
            self.embedded += 1
            self._held = ("tile", tile.index)
            self.cache.put_part(*args, emb, persist=bool(self.model_id))
        return emb

    def part_args(self, tile: Tile) -> tuple:
        """(image id, model id, kind, part index, parts shape) of ``tile`` in the cache."""
        source, grid = self._require()
        return (source.identity(), self.model_id, self.kind, tile.index, grid.shape)

    def to_tile_frame(self, xy: np.ndarray, tile: Tile) -> np.ndarray:
        """(..., 2) plane (x, y) -> the tile embedding's (x, y) frame."""
        xy = np.asarray(xy, np.float64)
        return (xy - np.array([tile.outer[1], tile.outer[0]])) * self.zoom

    def tile_masks(self, logits: np.ndarray, tile: Tile) -> np.ndarray:
        """(..., H, W) canvas logits -> (..., h, w) native logits of ``tile.outer``."""
        return _native(logits, tile.outer, self.zoom)

    def _use_tile(self, tile: Tile) -> None:
        if self._held != ("tile", tile.index):
            emb = self.embed_tile(tile)
            if self._held != ("tile", tile.index):
                self.predictor.set_embedding(emb)
                self._held = ("tile", tile.index)

    # --------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> TiledPrediction:
        """Masks of one object for prompts in full-plane pixels.

        Args:
            point_coords: (N, 2) points as (x, y) plane pixels.
            point_labels: (N,) 1 = foreground, 0 = background.
            box: (4,) x0, y0, x1, y1 in plane pixels.
            multimask_output: three candidate masks (one ambiguous click) instead of one.

        Raises:
            ValueError: a prompt outside the plane, or points spread over more than one
                tile's outer area.
        """
        source, grid = self._require()
        pts, labels, bbox = _check_prompts(point_coords, point_labels, box, source.shape)
        if bbox is None:
            first = int(np.argmax(labels == 1)) if np.any(labels == 1) else 0
            tile = grid.tile_at(pts[first, 1], pts[first, 0])
            _points_in(pts, tile)
            return self._from_tile(tile, pts, labels, None, multimask_output)
        region = _union(bbox, pts, source.shape)
        tile = grid.tile_covering(region)
        if tile is not None:
            return self._from_tile(tile, pts, labels, bbox, multimask_output)
        return self._from_window(region, pts, labels, bbox, multimask_output)

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> list[TiledPrediction]:
        """:meth:`predict` for B objects: points (B, N, 2), labels (B, N), boxes (B, 4)."""
        count = len(boxes) if point_coords is None else len(point_coords)
        return [
            self.predict(
                None if point_coords is None else point_coords[i],
                None if point_labels is None else point_labels[i],
                None if boxes is None else boxes[i],
                multimask_output,
            )
            for i in range(count)
        ]

    def _from_tile(self, tile, pts, labels, bbox, multimask) -> TiledPrediction:
        self._use_tile(tile)
        return self._from_tile_frame(tile, pts, labels, bbox, multimask)

    def _from_window(self, region: Box, pts, labels, bbox, multimask) -> TiledPrediction:
        """A box no tile covers: a window centred on it, at native resolution (zoomed as
        the tiles) when it fits, else at 1/2, 1/4... resolution."""
        source, _ = self._require()
        oh, ow = self.canvas_shape[0] // self.zoom, self.canvas_shape[1] // self.zoom
        rh, rw = region[2] - region[0], region[3] - region[1]
        if rh <= oh and rw <= ow:
            window = _centred(region, (oh, ow), source.shape)
            self._hold_window(("window", window), lambda: self.canvas(window))
            fake = Tile((-1, -1), window, window)
            result = self._from_tile_frame(fake, pts, labels, bbox, multimask)
            return result._replace(tile=None)
        ch, cw = self.canvas_shape
        step = 2 ** max(0, math.ceil(math.log2(max(rh / ch, rw / cw))))
        self._hold_window(
            ("coarse", region, step),
            lambda: source.model_input(region, invert=self.invert, step=step),
        )
        shift = np.array([region[1], region[0]], np.float64)
        size = self.predictor.original_size  # (h', w') of the downsampled region
        scale = np.array([size[1] / rw, size[0] / rh])
        p = None if pts is None else (pts - shift) * scale
        b = None if bbox is None else ((bbox.reshape(2, 2) - shift) * scale).reshape(4)
        logits, scores, low_res = self.predictor.predict(
            p, labels, b, multimask_output=multimask, return_logits=True
        )
        up = [cv2.resize(np.ascontiguousarray(m, np.float32), (rw, rh)) for m in logits]
        masks = np.stack(up) > self.threshold
        note = f"the box is larger than a tile: answered at 1/{step} resolution"
        if step == 1:
            note = "the box is larger than a zoomed tile: answered without zoom"
        return TiledPrediction(masks, region, scores, low_res, None, note)

    def _from_tile_frame(self, tile, pts, labels, bbox, multimask) -> TiledPrediction:
        p = None if pts is None else self.to_tile_frame(pts, tile)
        b = None if bbox is None else self.to_tile_frame(bbox.reshape(2, 2), tile).reshape(4)
        logits, scores, low_res = self.predictor.predict(
            p, labels, b, multimask_output=multimask, return_logits=True
        )
        masks = self.tile_masks(logits, tile) > self.threshold
        return TiledPrediction(masks, tile.outer, scores, low_res, tile, "")

    def _hold_window(self, key: tuple, image) -> None:
        """Embed an off-grid window (memory cache only)."""
        if self._held == key:
            return
        source, _ = self._require()
        ckey = self.cache.part_key(source.identity(), self.model_id, self.kind, ())
        ckey = f"{ckey}|{key}"
        emb = self.cache.get(ckey, self.model_id)
        if emb is None:
            self.predictor.set_image(image())
            self.embedded += 1
            self.cache.put(ckey, self.predictor.embedding, self.model_id, persist=False)
        else:
            self.predictor.set_embedding(emb)
        self._held = key


def slice_tiles(
    predictor: Any,
    cache: EmbeddingCache | None,
    model_id: str,
    persist: bool,
    tile_shape: Any = "auto",
    halo: Any = None,
    zoom: int = 1,
    invert: bool = False,
) -> TiledPredictor:
    """The tiled predictor of a stack's slices. Propagation, volume segmentation and the
    Volumes precompute all make it here, so a slice's tiles are found under one key
    whichever made them (the slice's content, the tiling, the model id; tiles of random
    weights are kept off disk). ``tile_shape`` ``"auto"``: the model input's default tiles."""
    shape = None if isinstance(tile_shape, str) else tile_shape
    return TiledPredictor(predictor, shape, halo, zoom, cache, model_id if persist else "", invert)


def paste_all(results: list[TiledPrediction], plane_shape: tuple[int, int]) -> np.ndarray:
    """(B, C, H, W) full-plane bool masks of B predictions (dense: B * C * H * W bytes)."""
    masks = np.zeros((len(results), len(results[0].scores), *plane_shape), bool)
    for out, r in zip(masks, results, strict=True):
        y0, x0, y1, x1 = r.box
        out[:, y0:y1, x0:x1] = r.masks
    return masks


# --------------------------------------------------------------------- helpers
def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.asnumpy() if hasattr(a, "asnumpy") else a, np.float64)


def _native(logits: np.ndarray, outer: Box, zoom: int) -> np.ndarray:
    """Crop canvas logits to the region's content and average ``zoom x zoom`` blocks."""
    h, w = outer[2] - outer[0], outer[3] - outer[1]
    crop = np.asarray(logits)[..., : h * zoom, : w * zoom]
    if zoom == 1:
        return crop
    blocks = crop.reshape(*crop.shape[:-2], h, zoom, w, zoom)
    return blocks.mean(axis=(-3, -1))


def _check_prompts(points, labels, box, shape):
    """Points (N, 2) float, labels (N,), box (4,) ordered x0 y0 x1 y1, all inside the plane."""
    H, W = shape
    pts = lab = bbox = None
    if points is not None:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels).reshape(-1)
        if len(lab) != len(pts) or len(pts) == 0:
            raise ValueError(f"give one label per point: {len(pts)} points, {len(lab)} labels")
        bad = ~((pts[:, 0] >= 0) & (pts[:, 0] < W) & (pts[:, 1] >= 0) & (pts[:, 1] < H))
        if bad.any():
            raise ValueError(
                f"point (x, y) = {tuple(pts[bad][0])} is outside the plane of {W} x {H} pixels"
            )
    if box is not None:
        b = np.asarray(box, np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ValueError(f"a box is 4 numbers x0, y0, x1, y1, got {box!r}")
        bbox = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        if bbox[0] < 0 or bbox[1] < 0 or bbox[2] > W or bbox[3] > H:
            raise ValueError(f"box {tuple(b)} is outside the plane of {W} x {H} pixels")
    if pts is None and bbox is None:
        raise ValueError("no prompt given: pass points with labels, and/or a box")
    return pts, lab, bbox


def _union(bbox: np.ndarray, pts: np.ndarray | None, shape) -> Box:
    """(y0, x0, y1, x1) pixel box holding the box and the points."""
    xs, ys = [bbox[0], bbox[2]], [bbox[1], bbox[3]]
    if pts is not None:
        xs += list(pts[:, 0])
        ys += list(pts[:, 1])
    y0, x0 = math.floor(min(ys)), math.floor(min(xs))
    y1 = min(shape[0], max(math.ceil(max(ys)), y0 + 1))
    x1 = min(shape[1], max(math.ceil(max(xs)), x0 + 1))
    return (y0, x0, y1, x1)


def _points_in(pts: np.ndarray, tile: Tile) -> None:
    oy0, ox0, oy1, ox1 = tile.outer
    out = ~((pts[:, 0] >= ox0) & (pts[:, 0] < ox1) & (pts[:, 1] >= oy0) & (pts[:, 1] < oy1))
    if out.any():
        raise ValueError(
            f"point (x, y) = {tuple(pts[out][0])} is outside the tile that holds the first "
            f"foreground point (x {ox0}..{ox1}, y {oy0}..{oy1}): the points of one object "
            "must lie within one tile and its halo; draw a box around a larger object"
        )


def _centred(region: Box, size: tuple[int, int], shape) -> Box:
    """A box of ``size`` centred on ``region``, shifted to lie in the plane (clipped)."""
    out = []
    for a0, a1, n, full in ((region[0], region[2], size[0], shape[0]),
                            (region[1], region[3], size[1], shape[1])):  # fmt: skip
        start = max(0, min(full - n, (a0 + a1 - n) // 2))
        out.append((start, min(full, start + n)))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


__all__ = ["TiledPrediction", "TiledPredictor", "paste_all", "slice_tiles"]
