"""Cut a plane into tiles with a halo (numpy only, no MindSpore).

Conventions (as micro-sam's ``tile_shape``/``halo``):

- ``tile_shape`` is the *inner* size; the region a tile's embedding is computed from (its
  *outer* area) is the inner area grown by ``halo`` on every side (``tile + 2 * halo``).
  At the plane's edges the outer area is shifted back inside the plane so that it keeps that
  full size (or the plane's, when smaller): a narrow last tile (say 24 px of a 600 px plane
  cut into 192 px tiles) is still embedded with a full tile of image around it, never as a
  sliver that can only give fragments.
- The inner areas partition the plane exactly (the last row/column of tiles may be smaller).
- Boxes are ``(y0, x0, y1, x1)`` in plane pixels, half-open (``y1``/``x1`` excluded).
- An outer side that lies inside the plane is an *inner edge*: a mask touching it may be cut
  by the tile, so the object is better taken from a neighbouring tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

Box = tuple[int, int, int, int]

ZOOMS = (1, 2, 4)
# Version of where tiles' outer areas lie (2: kept at full size at the plane's edges); it is
# part of the tile embeddings' cache name, so embeddings of an older layout are not reused.
GRID_LAYOUT = 2


class Tile(NamedTuple):
    """One tile of a :class:`TileGrid`.

    Attributes:
        index: (row, col) in the grid.
        inner: (y0, x0, y1, x1) of the area this tile answers for.
        outer: ``inner`` grown by the halo, kept at full size inside the plane (what is
            embedded; see the module's conventions).
    """

    index: tuple[int, int]
    inner: Box
    outer: Box


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(v, v)`` from an int, or a checked pair of ints (``name`` is for the error)."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (h, w), got {value!r}") from None
        if len(pair) != 2:
            raise ValueError(f"{name} must be a pair (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


class TileGrid:
    """Tiles of ``tile_shape`` (inner size) with ``halo`` over a plane of ``plane_shape``.

    Args:
        plane_shape: (H, W) of the plane.
        tile_shape: (h, w) inner size of a tile (an int means square).
        halo: (hy, hx) margin added on each side (an int means the same on both axes);
            it must be less than half the tile.

    Raises:
        ValueError: non-positive sizes, a negative halo or a halo of half a tile or more.
    """

    def __init__(
        self,
        plane_shape: Sequence[int],
        tile_shape: int | Sequence[int],
        halo: int | Sequence[int] = (0, 0),
    ) -> None:
        plane = as_pair(plane_shape, "plane_shape")
        tile = as_pair(tile_shape, "tile_shape")
        margin = as_pair(halo, "halo")
        if min(plane) <= 0:
            raise ValueError(f"the plane must have a positive size, got {plane}")
        if min(tile) <= 0:
            raise ValueError(f"tile_shape must be positive, got {tile}")
        if min(margin) < 0:
            raise ValueError(f"halo must be zero or positive, got {margin}")
        for axis, (t, h) in enumerate(zip(tile, margin, strict=True)):
            if 2 * h >= t:
                raise ValueError(
                    f"halo {margin} is half a tile {tile} or more (axis {axis}): use a halo "
                    "smaller than half the tile, or larger tiles"
                )
        self.plane_shape: tuple[int, int] = plane
        self.tile_shape: tuple[int, int] = tile
        self.halo: tuple[int, int] = margin
        self.shape: tuple[int, int] = (math.ceil(plane[0] / tile[0]), math.ceil(plane[1] / tile[1]))
        self.tiles: list[Tile] = [
            self.tile((r, c)) for r in range(self.shape[0]) for c in range(self.shape[1])
        ]

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def __iter__(self):
        return iter(self.tiles)

    def __repr__(self) -> str:
        return (
            f"TileGrid(plane_shape={self.plane_shape}, tile_shape={self.tile_shape}, "
            f"halo={self.halo}: {self.shape[0]}x{self.shape[1]} tiles)"
        )

    @property
    def outer_shape(self) -> tuple[int, int]:
        """(h, w) of an unclipped outer area: ``tile_shape + 2 * halo``."""
        return (self.tile_shape[0] + 2 * self.halo[0], self.tile_shape[1] + 2 * self.halo[1])

    def tile(self, index: Sequence[int]) -> Tile:
        """The tile at grid position (row, col)."""
        r, c = (int(v) for v in index)
        if not (0 <= r < self.shape[0] and 0 <= c < self.shape[1]):
            raise IndexError(f"tile index {(r, c)} is outside the {self.shape} grid")
        (H, W), (th, tw), (hy, hx) = self.plane_shape, self.tile_shape, self.halo
        y0, x0 = r * th, c * tw
        y1, x1 = min(H, y0 + th), min(W, x0 + tw)
        oy0, oy1 = _outer_span(y0, y1, hy, th + 2 * hy, H)
        ox0, ox1 = _outer_span(x0, x1, hx, tw + 2 * hx, W)
        return Tile((r, c), (y0, x0, y1, x1), (oy0, ox0, oy1, ox1))

    def tile_at(self, y: float, x: float) -> Tile:
        """The tile whose inner area holds pixel (y, x) (fractions are floored)."""
        yi, xi = math.floor(y), math.floor(x)
        H, W = self.plane_shape
        if not (0 <= yi < H and 0 <= xi < W):
            raise ValueError(f"pixel (y={y}, x={x}) is outside the plane of shape {(H, W)}")
        return self.tile((yi // self.tile_shape[0], xi // self.tile_shape[1]))

    def tile_covering(self, box: Sequence[float]) -> Tile | None:
        """A tile whose outer area holds ``box`` (y0, x0, y1, x1) whole, or None.

        Of several, the one whose inner centre is nearest the box centre. Only the tile
        under the box centre and its neighbours can qualify (the halo is under half a tile).
        """
        y0, x0, y1, x1 = _check_box(box, self.plane_shape)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        centre = self.tile_at(min(cy, self.plane_shape[0] - 1), min(cx, self.plane_shape[1] - 1))
        best, best_d = None, math.inf
        r0, c0 = centre.index
        for r in range(max(0, r0 - 1), min(self.shape[0], r0 + 2)):
            for c in range(max(0, c0 - 1), min(self.shape[1], c0 + 2)):
                t = self.tile((r, c))
                oy0, ox0, oy1, ox1 = t.outer
                if oy0 <= y0 and ox0 <= x0 and y1 <= oy1 and x1 <= ox1:
                    iy0, ix0, iy1, ix1 = t.inner
                    d = ((iy0 + iy1) / 2 - cy) ** 2 + ((ix0 + ix1) / 2 - cx) ** 2
                    if d < best_d:
                        best, best_d = t, d
        return best

    def tiles_overlapping(self, box: Sequence[float]) -> list[Tile]:
        """Tiles whose inner area meets ``box`` (y0, x0, y1, x1), row-major."""
        y0, x0, y1, x1 = _check_box(box, self.plane_shape)
        th, tw = self.tile_shape
        rows = range(math.floor(y0) // th, (math.ceil(y1) - 1) // th + 1)
        cols = range(math.floor(x0) // tw, (math.ceil(x1) - 1) // tw + 1)
        return [self.tile((r, c)) for r in rows for c in cols]

    def inner_edges(self, tile: Tile) -> tuple[bool, bool, bool, bool]:
        """(top, left, bottom, right): True where that side of the outer area lies inside
        the plane, so a mask touching it may be cut by the tile."""
        oy0, ox0, oy1, ox1 = tile.outer
        H, W = self.plane_shape
        return (oy0 > 0, ox0 > 0, oy1 < H, ox1 < W)


def _outer_span(start: int, stop: int, halo: int, full: int, total: int) -> tuple[int, int]:
    """The outer span of inner span [start, stop) on one axis: grown by ``halo``, then shifted
    back inside [0, total) so that it spans ``min(full, total)`` pixels."""
    lo, hi = max(0, start - halo), min(total, stop + halo)
    size = min(full, total)
    if hi - lo < size:
        if lo == 0:
            hi = size
        else:  # hi == total: the last tile
            lo = total - size
    return lo, hi


def model_patch(model: Any) -> int:
    """Input pixels per embedding cell of a SAM model (SAM's ViT: 16, micro: 8)."""
    cells = int(model.prompt_encoder.image_embedding_size[0])
    return int(model.img_size) // cells


def check_patch(tile_shape: int | Sequence[int] | None, zoom: int, patch: int) -> None:
    """Refuse tiles narrower than one cell of the model's patch grid (``patch`` input pixels
    per embedding cell: SAM's ViT 16, the micro model 8) at ``zoom``; None (no tiles) passes.

    Raises:
        ValueError: saying which tile size would work.
    """
    if tile_shape is None:
        return
    th, tw = as_pair(tile_shape, "tile_shape")
    zoom = _check_zoom(zoom)
    if min(th, tw) * zoom < int(patch):
        need = math.ceil(int(patch) / zoom)
        raise ValueError(
            f"tile {(th, tw)} at zoom {zoom} is smaller than the model's {patch}-pixel patch "
            f"grid: use tiles of at least {need} px (or a larger zoom)"
        )


def _check_box(box: Sequence[float], plane_shape: tuple[int, int]) -> tuple[float, ...]:
    """A (y0, x0, y1, x1) box inside the plane with y0 < y1 and x0 < x1, or a ValueError."""
    vals = tuple(float(v) for v in box)
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"a box is (y0, x0, y1, x1) finite numbers, got {box!r}")
    y0, x0, y1, x1 = vals
    H, W = plane_shape
    if not (y0 < y1 and x0 < x1):
        raise ValueError(f"box {box!r} is empty: need y0 < y1 and x0 < x1")
    if y0 < 0 or x0 < 0 or y1 > H or x1 > W:
        raise ValueError(f"box {box!r} is not inside the plane of shape {(H, W)}")
    return vals


def default_tile_shape(
    model_input: int, halo: int | Sequence[int], zoom: int = 1
) -> tuple[int, int]:
    """The inner tile size whose outer area, zoomed ``zoom`` times, is the model input.

    ``model_input / zoom - 2 * halo`` per axis, e.g. SAM (1024) with halo 64: 896;
    the embedded micro model (256) at zoom 2 with halo 16: 96.
    """
    hy, hx = as_pair(halo, "halo")
    zoom = _check_zoom(zoom)
    outer = int(model_input) // zoom
    shape = (outer - 2 * hy, outer - 2 * hx)
    if min(shape) <= 0 or 2 * max(hy, hx) >= min(shape):
        raise ValueError(
            f"halo {(hy, hx)} leaves no useful tile in a model input of {model_input} px at "
            f"zoom {zoom} ({outer} px per tile): use a halo under {outer // 4} px"
        )
    return shape


def default_halo(model_input: int, zoom: int = 1) -> tuple[int, int]:
    """A halo of 1/8 of the zoomed model input (SAM 1024: 128; micro 256: 32)."""
    side = int(model_input) // _check_zoom(zoom) // 8
    return (side, side)


def needs_tiling(plane_shape: Sequence[int], model_input: int, factor: float = 1.5) -> bool:
    """Whether a plane is larger than ``factor`` times the model input on either axis."""
    return max(int(v) for v in plane_shape[:2]) > factor * int(model_input)


def plane_tiling(
    tile_shape: Any, halo: Any, zoom: int, plane_shape: Sequence[int], model_input: int
) -> dict[str, Any]:
    """The tile settings for a plane: ``{}`` for the whole plane, else ``tile_shape``,
    ``halo`` and ``zoom`` as the generator takes them.

    ``tile_shape``: None or ``"off"``: no tiles; ``"auto"``: tiles when the zoom is above 1
    or the plane is larger than about 1.5x the model input (:func:`needs_tiling`), of
    :func:`default_tile_shape`; a size: tiles of that size. ``halo`` None: :func:`default_halo`.
    """
    zoom = _check_zoom(int(zoom))
    if tile_shape is None or tile_shape == "off":
        if tile_shape is None and (halo is not None or zoom != 1):
            raise ValueError("halo and zoom need tile_shape (tiling is off without it)")
        return {}
    if tile_shape == "auto" and zoom == 1 and not needs_tiling(plane_shape, model_input):
        return {}
    halo = default_halo(model_input, zoom) if halo is None else as_pair(halo, "halo")
    if tile_shape == "auto":
        tile_shape = default_tile_shape(model_input, halo, zoom)
    elif isinstance(tile_shape, str):
        raise ValueError(f"tile_shape: a size, 'auto' or None, not {tile_shape!r}")
    return {"tile_shape": as_pair(tile_shape, "tile_shape"), "halo": halo, "zoom": zoom}


def suggest_zoom(
    object_diameter_px: float, model_input: int, patch: int = 16, min_cells: float = 2.0
) -> int:
    """A zoom in {1, 2, 4} for objects of about ``object_diameter_px`` pixels.

    Rule: the image encoder sees one token (embedding cell) per ``patch`` pixels of its input
    (SAM's ViT: 16; the embedded micro model: 8). An object should span at least
    ``min_cells`` cells, so the smallest zoom with ``diameter * zoom >= min_cells * patch``
    is chosen, up to 4. A zoom is never chosen when a zoomed tile would span fewer than
    four object diameters (``model_input / zoom < 4 * diameter``).
    """
    d = float(object_diameter_px)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"object diameter must be a positive number of pixels, got {d}")
    if patch <= 0 or model_input <= 0:
        raise ValueError(f"patch ({patch}) and model_input ({model_input}) must be positive")
    chosen = 1
    for zoom in ZOOMS:
        if model_input / zoom < 4 * d:
            break
        chosen = zoom
        if d * zoom >= min_cells * patch:
            break
    return chosen


def _check_zoom(zoom: int) -> int:
    if zoom not in ZOOMS:
        raise ValueError(f"zoom must be one of {ZOOMS}, got {zoom!r}")
    return int(zoom)


__all__ = [
    "Box",
    "GRID_LAYOUT",
    "Tile",
    "TileGrid",
    "ZOOMS",
    "as_pair",
    "check_patch",
    "default_halo",
    "default_tile_shape",
    "model_patch",
    "needs_tiling",
    "plane_tiling",
    "suggest_zoom",
]
