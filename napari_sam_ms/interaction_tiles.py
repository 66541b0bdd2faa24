"""Prompts on large planes for the widgets, without Qt: one round answered from tiles.

:class:`TiledPrompts` keeps a :class:`SliceTiles` (a :class:`~napari_sam_ms.tiled.TiledPredictor`
whose cache parts of a stack's slice are indexed ``(*slice, row, col)``) per model and tiling,
and answers every object of a round from the tile that holds it, at the plane's own
resolution. :func:`region_of` and :func:`masks_over` put per-object crops into one region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bridge import ObjectPrompt
from .embedding_cache import EmbeddingCache
from .progress import Cancelled
from .tiled import TiledPrediction, TiledPredictor
from .utils.image import looks_dark_on_bright
from .utils.tiling import Box, Tile

Report = Callable[[int, int], bool]
# Tiled planes up to this many pixels get a whole-plane preview (16 MB of int32 ids); larger
# ones a preview over the objects' crops only.
PREVIEW_WHOLE_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class TileSpec:
    """The tiles prompts are answered from (:class:`TiledPredictor`'s ``tile_shape``,
    ``halo`` and ``zoom``; None: its default)."""

    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    zoom: int = 1

    def generator_settings(self) -> dict[str, Any]:
        """These tiles as whole-image settings (tiles replace crop layers)."""
        return {"tile_shape": self.tile_shape, "halo": self.halo, "zoom": self.zoom,
                "crop_n_layers": 0}  # fmt: skip


class SliceTiles(TiledPredictor):
    """A :class:`TiledPredictor` whose parts of a stack's slice are cached as
    ``(*slice, row, col)`` under the stack's id, so all slices share one cache group."""

    stack_id: str = ""  # "" (a 2D layer): parts (row, col) under the plane's own id
    prefix: tuple[int, ...] = ()  # the slice index
    prefix_shape: tuple[int, ...] = ()  # the stack's leading shape

    def part_args(self, tile: Tile) -> tuple:
        """As :meth:`TiledPredictor.part_args`, with the slice in the part index."""
        if not self.stack_id:
            return super().part_args(tile)
        _, grid = self._require()
        index, shape = (*self.prefix, *tile.index), (*self.prefix_shape, *grid.shape)
        return (self.stack_id, self.model_id, self.kind, index, shape)


class TiledPrompts:
    """The tiled side of a prompt session: one :class:`SliceTiles` kept per model and tiling.

    Args:
        cache: the widget's cache (trained weights: memory and disk); random weights use a
            private memory-only one.
    """

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache
        self._private = EmbeddingCache(cache_dir=False)
        self._kept: tuple[tuple, SliceTiles] | None = None

    @property
    def tiles(self) -> SliceTiles | None:
        """The tiled predictor of the last round (tests count its ``embedded``)."""
        return None if self._kept is None else self._kept[1]

    def tiles_for(self, held: Any, spec: TileSpec, invert: bool) -> SliceTiles:
        """The tiled predictor for this held model and tiling (kept while they stay)."""
        key = (id(held), spec, invert)
        if self._kept is None or self._kept[0] != key:
            persistent = bool(held.persistent)
            cache = self.cache if persistent else self._private
            model_id = held.loaded.cache_id  # TiledPredictor adds the predictor's suffix
            tiles = SliceTiles(
                held.predictor, spec.tile_shape, spec.halo, spec.zoom, cache, model_id, invert
            )
            self._kept = (key, tiles)
        return self._kept[1]

    def predict(
        self, held: Any, target: Any, objects: Sequence[ObjectPrompt], report: Report
    ) -> dict[str, Any]:
        """Three candidates per object from its tile: the fields of a ``Prediction``
        (``masks`` and ``scores`` per object, ``boxes``, ``status``, ``dark_on_bright``).

        Raises:
            Cancelled: ``report`` returned False between objects.
            ValueError: a prompt outside the plane, or one object's points over several tiles.
        """
        tiles = self.tiles_for(held, target.tiles, bool(target.inverted))
        tiles.set_image(target.source)
        stack = target.stack_id() if getattr(target, "stack_id", None) else ""
        tiles.stack_id = stack
        tiles.prefix = tuple(int(i) for i in target.slice_index) if stack else ()
        tiles.prefix_shape = tuple(int(n) for n in target.spatial_shape[:-2]) if stack else ()
        results: list[TiledPrediction] = []
        for k, obj in enumerate(objects):
            if not report(k, len(objects)):
                raise Cancelled()
            results.append(tiles.predict(obj.points, obj.labels, obj.box, multimask_output=True))
        report(len(objects), len(objects))
        return {
            "masks": [np.asarray(r.masks, bool) for r in results],
            "scores": [np.asarray(r.scores, np.float32) for r in results],
            "boxes": [tuple(int(v) for v in r.box) for r in results],
            "status": "; ".join(dict.fromkeys(r.note for r in results if r.note)),
        }


def dark_on_bright(target: Any, box: Box) -> bool:
    """Whether the model input of ``box`` of a tiled target looks dark-on-bright."""
    rgb = target.source.model_input(box, invert=bool(target.inverted))
    return looks_dark_on_bright(rgb)


def region_of(boxes: Sequence[Box] | None, plane_shape: Sequence[int]) -> Box:
    """(y0, x0, y1, x1) holding every box (None: the whole plane)."""
    if not boxes:
        return (0, 0, int(plane_shape[0]), int(plane_shape[1]))
    b = np.array(boxes)
    return (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max()))


def preview_ids(
    masks: Sequence[np.ndarray],
    boxes: Sequence[Box] | None,
    plane_shape: Sequence[int],
    whole_up_to: int = PREVIEW_WHOLE_PIXELS,
) -> tuple[Box, np.ndarray]:
    """(region, int32 ids 1..N over it) of one mask per object, the first object on top.

    ``boxes`` None: every mask is the whole plane. Else each mask is a crop over its box,
    painted into the whole plane when it has at most ``whole_up_to`` pixels, else into
    :func:`region_of` the boxes (one array for all objects, never one per object).
    """
    h, w = (int(v) for v in plane_shape[:2])
    region = (0, 0, h, w)
    if boxes and h * w > whole_up_to:
        region = region_of(boxes, plane_shape)
    y0, x0, y1, x1 = region
    out = np.zeros((y1 - y0, x1 - x0), np.int32)
    for i, mask in enumerate(masks):
        by0, bx0, by1, bx1 = boxes[i] if boxes else region
        view = out[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
        view[np.asarray(mask, bool) & (view == 0)] = i + 1
    return region, out


def masks_over(region: Box, masks: Sequence[np.ndarray], boxes: Sequence[Box]) -> list[np.ndarray]:
    """Each crop mask (over its box) placed in a bool array over ``region``."""
    y0, x0, y1, x1 = region
    out = []
    for mask, (by0, bx0, by1, bx1) in zip(masks, boxes, strict=True):
        full = np.zeros((y1 - y0, x1 - x0), bool)
        full[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = mask
        out.append(full)
    return out


__all__ = [
    "SliceTiles",
    "TileSpec",
    "TiledPrompts",
    "dark_on_bright",
    "masks_over",
    "preview_ids",
    "region_of",
]
