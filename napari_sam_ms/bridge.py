"""napari <-> SAM geometry, numpy only (no Qt, no napari).

Conventions:

- napari layers hold coordinates in their own *data* frame, one number per axis, rows before
  columns: ``(..., row, col)``. ``world = data * scale + translate``. Layers are aligned on
  their trailing axes (a 2D layer over a 3D image covers every slice).
- The image plane is the last two axes of the image (after dropping an RGB(A) axis); the
  leading axes pick the slice the viewer shows.
- SAM takes ``(x, y)`` pixels of that plane with pixel ``i`` covering ``[i, i + 1)``; napari puts
  the centre of pixel ``i`` at data coordinate ``i``. So ``x = col + 0.5``, ``y = row + 0.5``.
- A box is ``(x0, y0, x1, y1)`` from the min/max of a rectangle's corners, so the direction it
  was drawn in does not matter.

Only scale and translate are honoured (not rotate, shear or affine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PIXEL_OFFSET = 0.5  # napari pixel centre (i) -> SAM continuous coordinate (i + 0.5)


@dataclass(frozen=True)
class Frame:
    """A layer's data frame in world space: ``world = data * scale + translate``."""

    scale: np.ndarray
    translate: np.ndarray

    @classmethod
    def of(cls, scale: Sequence[float], translate: Sequence[float] | None = None) -> Frame:
        """Build a frame; ``translate`` defaults to zeros."""
        s = np.asarray(scale, dtype=float).reshape(-1)
        t = np.zeros_like(s) if translate is None else np.asarray(translate, float).reshape(-1)
        if s.shape != t.shape:
            raise ValueError(f"scale {s.shape} and translate {t.shape} differ in length")
        if np.any(s == 0) or not np.all(np.isfinite(s)):
            raise ValueError(f"scale must be finite and non-zero, got {s}")
        return cls(s, t)

    @property
    def ndim(self) -> int:
        return len(self.scale)

    def level(self, downsample: Sequence[float]) -> Frame:
        """The frame of a multiscale level downsampled by ``downsample`` per axis.

        Pixel ``i`` of the level covers level-0 pixels ``i*d .. i*d + d - 1`` (napari's
        "extract level" convention), so its centre sits at ``i*d + (d - 1) / 2``.
        """
        d = np.asarray(downsample, dtype=float).reshape(-1)[-self.ndim :]
        return Frame(self.scale * d, self.translate + (d - 1) / 2 * self.scale)


def map_coords(coords: np.ndarray, src: Frame, dst: Frame) -> np.ndarray:
    """Map (N, d_src) data coordinates of one layer to (N, d_dst) of another, via world.

    Axes are aligned on the right, as napari does. Leading axes that ``src`` lacks come out
    as NaN ("every slice"); extra leading axes of ``src`` are dropped.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != src.ndim:
        raise ValueError(f"expected (N, {src.ndim}) coordinates, got {coords.shape}")
    n = min(src.ndim, dst.ndim)
    world = coords[:, src.ndim - n :] * src.scale[-n:] + src.translate[-n:]
    out = np.full((len(coords), dst.ndim), np.nan)
    out[:, dst.ndim - n :] = (world - dst.translate[-n:]) / dst.scale[-n:]
    return out


def world_to_index(world_point: Sequence[float], frame: Frame) -> tuple[int, ...]:
    """Integer data index of a world point (the trailing ``frame.ndim`` axes are used)."""
    w = np.asarray(world_point, dtype=float).reshape(-1)[-frame.ndim :]
    return tuple(int(v) for v in np.round((w - frame.translate) / frame.scale))


def in_slice(coords: np.ndarray, slice_index: Sequence[int]) -> np.ndarray:
    """(N,) True where the leading coordinates round to ``slice_index`` (NaN matches any)."""
    coords = np.asarray(coords, dtype=float)
    k = len(slice_index)
    if k == 0:
        return np.ones(len(coords), dtype=bool)
    lead = coords[:, :k]
    same = np.isnan(lead) | (np.floor(lead + 0.5) == np.asarray(slice_index, dtype=float))
    return np.all(same, axis=1)


def to_xy(coords: np.ndarray) -> np.ndarray:
    """(N, >=2) data coordinates (..., row, col) -> (N, 2) SAM (x, y)."""
    coords = np.asarray(coords, dtype=float)
    return coords[:, [-1, -2]] + PIXEL_OFFSET


def from_xy(xy: np.ndarray) -> np.ndarray:
    """(N, 2) SAM (x, y) -> (N, 2) plane data coordinates (row, col)."""
    xy = np.asarray(xy, dtype=float)
    return xy[:, [1, 0]] - PIXEL_OFFSET


def inside(xy: np.ndarray, plane_shape: Sequence[int]) -> np.ndarray:
    """(N,) True where SAM (x, y) points lie on an image plane of shape (H, W)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    h, w = plane_shape[-2:]
    return (xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h)


def points_to_sam(
    coords: np.ndarray,
    labels: np.ndarray,
    src: Frame,
    image: Frame,
    slice_index: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of a napari layer -> SAM (x, y) of the shown slice of the image.

    Args:
        coords: (N, d) points in the points layer's data frame.
        labels: (N,) 1 = foreground, 0 = background.
        src: the points layer's frame; image: the image's (level) frame.
        slice_index: the image's leading indices of the shown slice (``image.ndim - 2`` ints).

    Returns:
        xy (M, 2), labels (M,), and index (M,) of the kept input points.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, src.ndim)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(coords):
        raise ValueError(f"{len(coords)} points but {len(labels)} labels")
    mapped = map_coords(coords, src, image)
    keep = np.flatnonzero(in_slice(mapped, slice_index))
    return to_xy(mapped[keep]), labels[keep].astype(np.int32), keep


def rectangle_to_box(vertices: np.ndarray) -> np.ndarray:
    """(4, >=2) rectangle corners (..., row, col) -> SAM box (x0, y0, x1, y1), any direction.

    Corners are continuous data coordinates: a rectangle drawn along the pixel edges of rows
    ``r0..r1`` has corners at ``r0 - 0.5`` and ``r1 + 0.5``, which become SAM's ``r0`` and
    ``r1 + 1``.
    """
    xy = to_xy(np.asarray(vertices, dtype=float))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]])


def rectangles_to_sam(
    rectangles: Sequence[np.ndarray],
    src: Frame,
    image: Frame,
    slice_index: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles of a shapes layer -> (B, 4) SAM boxes on the shown slice, and their index.

    A rectangle belongs to the slice when the mean of its corners' leading coordinates rounds
    to ``slice_index``.
    """
    boxes, keep = [], []
    for i, verts in enumerate(rectangles):
        mapped = map_coords(np.asarray(verts, dtype=float).reshape(-1, src.ndim), src, image)
        centre = mapped.mean(axis=0, keepdims=True)  # NaN (missing axis) stays NaN
        if in_slice(centre, slice_index)[0]:
            boxes.append(rectangle_to_box(mapped))
            keep.append(i)
    return np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(keep, dtype=int)


def clip_box(box: np.ndarray, plane_shape: Sequence[int]) -> np.ndarray | None:
    """Clip a box to the plane; None when nothing of it lies on the image."""
    h, w = plane_shape[-2:]
    x0, y0, x1, y1 = box
    out = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)], dtype=float)
    if out[2] <= out[0] or out[3] <= out[1]:
        return None
    return out


@dataclass
class ObjectPrompt:
    """The prompts of one object: points and/or a box, in SAM (x, y) pixels."""

    points: np.ndarray | None = None  # (N, 2)
    labels: np.ndarray | None = None  # (N,)
    box: np.ndarray | None = None  # (4,)

    @property
    def has_foreground(self) -> bool:
        return self.labels is not None and bool(np.any(self.labels == 1))


def _box_contains(box: np.ndarray, xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def _box_owner(xy: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) index of the smallest box holding each point, -1 for points in no box."""
    if not len(boxes) or not len(xy):
        return np.full(len(xy), -1)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    contains = np.stack([_box_contains(b, xy) for b in boxes], axis=1)  # (N, B)
    masked = np.where(contains, areas[None, :], np.inf)
    return np.where(contains.any(axis=1), np.argmin(masked, axis=1), -1)


def _box_objects(
    xy: np.ndarray, labels: np.ndarray, boxes: np.ndarray
) -> tuple[list[ObjectPrompt], np.ndarray]:
    """One object per box with the points inside it, and a mask of the points in no box."""
    owner = _box_owner(xy, boxes)
    objects = []
    for b, box in enumerate(boxes):
        sel = owner == b
        pts = (xy[sel], labels[sel]) if sel.any() else (None, None)
        objects.append(ObjectPrompt(pts[0], pts[1], box.copy()))
    return objects, owner == -1


def _as_prompts(
    xy: np.ndarray, labels: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(xy, dtype=float).reshape(-1, 2),
        np.asarray(labels).reshape(-1).astype(np.int32),
        np.asarray(boxes, dtype=float).reshape(-1, 4),
    )


def group_prompts(xy: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> list[ObjectPrompt]:
    """Split prompts into objects (SAM's meaning: all points outside boxes are one object).

    - Each box is one object; a point inside boxes belongs to the smallest of them.
    - Points inside no box form one more object if at least one of them is foreground
      (background points alone do not make an object).
    - Without boxes, all points form one object (again only with a foreground point).
    """
    xy, labels, boxes = _as_prompts(xy, labels, boxes)
    objects, free = _box_objects(xy, labels, boxes)
    if free.any() and np.any(labels[free] == 1):
        objects.append(ObjectPrompt(xy[free], labels[free], None))
    return objects


def group_per_point(xy: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> list[ObjectPrompt]:
    """Split prompts into objects, one per foreground point ("several clicks, several objects").

    - Boxes as in :func:`group_prompts`: each box is one object, points inside refine it.
    - Each foreground point inside no box is its own object, in click order.
    - Each background point inside no box joins the object whose foreground point is nearest
      (the first of equally near ones); with no such object it is dropped.
    """
    xy, labels, boxes = _as_prompts(xy, labels, boxes)
    objects, free = _box_objects(xy, labels, boxes)
    fg = np.flatnonzero(free & (labels == 1))
    bg = np.flatnonzero(free & (labels != 1))
    members: list[list[int]] = [[int(i)] for i in fg]
    if len(fg):
        for j in bg:
            dist = np.hypot(*(xy[fg] - xy[j]).T)
            members[int(np.argmin(dist))].append(int(j))
    for idx in members:
        objects.append(ObjectPrompt(xy[idx], labels[idx], None))
    return objects


def as_point_labels(values: np.ndarray | None, n: int) -> np.ndarray:
    """(n,) SAM point labels from a points layer's ``label`` feature (None: no such feature).

    Missing feature, missing values (NaN/None) and anything not read as "background" mean
    foreground (1). Background (0) is 0, False, or a text such as "background"/"bg"/"0".
    """
    if values is None:
        return np.ones(n, np.int32)
    arr = np.asarray(values)[:n]
    if arr.dtype.kind in "biuf" and len(arr) == n:  # numbers: 0 is background, NaN is not
        return np.where(arr == 0, 0, 1).astype(np.int32)
    out = np.ones(n, np.int32)
    for i, v in enumerate(list(values)[:n]):
        if isinstance(v, str):
            out[i] = 0 if v.strip().lower() in _BACKGROUND_WORDS else 1
        elif v is not None and not (isinstance(v, float) and np.isnan(v)):
            try:
                out[i] = 0 if float(v) == 0 else 1
            except (TypeError, ValueError):
                out[i] = 1
    return out


_BACKGROUND_WORDS = frozenset({"0", "bg", "background", "negative", "neg", "false", "no"})


__all__ = [
    "Frame",
    "ObjectPrompt",
    "clip_box",
    "as_point_labels",
    "from_xy",
    "group_per_point",
    "group_prompts",
    "in_slice",
    "inside",
    "map_coords",
    "points_to_sam",
    "rectangle_to_box",
    "rectangles_to_sam",
    "to_xy",
    "world_to_index",
]
