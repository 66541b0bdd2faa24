"""Per-slice label images merged into 3D objects (numpy and scipy only).

::

    from napari_sam_ms.volumes.match3d import match_slices

    result = match_slices(per_slice_labels, min_iou=0.3, min_size=50, scale=(2.0, 0.5, 0.5))
    result.labels   # (Z, H, W) uint32, 3D objects 1..N, largest volume first

Rules:

- Objects of neighbouring slices ``z`` and ``z + 1`` are linked one to one by linear
  assignment (:func:`scipy.optimize.linear_sum_assignment`) maximising the summed IoU of the
  linked pairs; a pair is linked only when its IoU is at least ``min_iou``. So an object that
  splits keeps its id in the part that overlaps it best and the other part starts a new
  object; two objects that merge continue as the one that overlaps best.
- With ``max_gap`` > 0, an object that ends on slice ``z`` and one that starts on slice
  ``z + k`` (2 <= k <= max_gap + 1) are linked the same way (closest gaps first); the slices
  between stay as they were (the object has no pixels there).
- Linked objects form one 3D object (:func:`scipy.sparse.csgraph.connected_components`);
  links are one to one, so a 3D object has at most one 2D object per slice. An object on
  fewer than ``min_slices`` slices is dropped (noise found on one slice rarely recurs at
  the same place on the next).
- Anisotropy: ``scale`` is the (z, y, x) spacing of a voxel (a napari layer's ``scale``).
  It enters through the volume only: an object is dropped when its physical volume
  (voxels times ``prod(scale)``) is below ``min_size``; without ``scale`` that is a count of
  voxels. Linking is decided by per-slice IoU, which no spacing changes.
- Ids are consecutive, 1..N by decreasing volume (ties: the object met first in C order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

MIN_IOU = 0.3  # default link threshold between neighbouring slices
MAX_GAP = 0  # default: link neighbouring slices only
#: Defaults of volumetric automatic segmentation (``segment_volume``, ``segment --volume``),
#: chosen by measurement (benchmarks/volume_auto.py, the embedded model on synthetic
#: volumes): whole-image mode finds background texture as small masks on every slice, and
#: those rarely recur at one place on three slices with IoU 0.5, while objects do. Objects
#: thinner than three slices are lost with these: lower ``min_slices`` for coarse z steps.
AUTOMATIC = {"min_iou": 0.5, "max_gap": 1, "min_slices": 3}


@dataclass(frozen=True)
class Matched:
    """3D objects made of per-slice objects.

    Attributes:
        labels: (Z, H, W) uint32, 0 background, objects 1..N by decreasing volume.
        count: N.
        links: one (z0, z1, iou) per link made (slice of each end and the pair's IoU).
        dropped: 3D objects dropped (smaller than ``min_size`` or on fewer slices than
            ``min_slices``).
    """

    labels: np.ndarray
    count: int
    links: tuple[tuple[int, int, float], ...]
    dropped: int


def slice_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every object of ``a`` with every object of ``b`` (two label images, ids
    0..n compact, 0 background): an (n_a, n_b) array, row ``i`` for id ``i + 1``."""
    na, nb = int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1
    inter = np.bincount((a.ravel() * nb + b.ravel()), minlength=na * nb).reshape(na, nb)
    area_a, area_b = inter.sum(axis=1), inter.sum(axis=0)
    inter = inter[1:, 1:].astype(np.float64)
    union = area_a[1:, None] + area_b[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign(iou: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs (row, column, IoU) maximising the summed IoU over pairs with IoU at
    least ``min_iou`` (linear assignment; pairs below the threshold count as 0 and are not
    returned)."""
    if iou.size == 0:
        return []
    gain = np.where(iou >= min_iou, iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols, strict=True)
            if gain[r, c] > 0]  # fmt: skip


def match_slices(
    slices: np.ndarray | Sequence[np.ndarray],
    min_iou: float = MIN_IOU,
    min_size: float = 0,
    scale: Sequence[float] | None = None,
    max_gap: int = MAX_GAP,
    min_slices: int = 1,
) -> Matched:
    """Merge per-slice label images into 3D objects (module docstring: the rules).

    Args:
        slices: (Z, H, W) non-negative integer labels, each slice's ids its own (0: none),
            or a sequence of Z such (H, W) images.
        min_iou: the least IoU that links objects of two slices (0 < min_iou <= 1).
        min_size: the least volume of a kept 3D object, in units of ``prod(scale)`` (voxels
            without ``scale``).
        scale: (z, y, x) spacing of a voxel; None: (1, 1, 1).
        max_gap: link across up to this many slices where an object is missing.
        min_slices: the least number of slices a kept 3D object spans.

    Returns:
        A :class:`Matched`.

    Raises:
        ValueError: not a stack of 2D integer label images, negative ids, or an option out
            of range.
    """
    stack = _check_stack(slices)
    voxel = check_options(min_iou, scale, max_gap, min_slices)
    compact, counts, areas = [], [], []
    for plane in stack:
        _, inverse = np.unique(plane, return_inverse=True)
        ids = inverse.reshape(plane.shape) + (0 if (plane == 0).any() else 1)
        compact.append(ids)
        counts.append(int(ids.max(initial=0)))
        areas.append(np.bincount(ids.ravel(), minlength=counts[-1] + 1)[1:])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    has_prev = np.zeros(offsets[-1], bool)
    has_next = np.zeros(offsets[-1], bool)
    edges: list[tuple[int, int]] = []
    links: list[tuple[int, int, float]] = []

    def link(z0: int, z1: int, rows: np.ndarray, cols: np.ndarray) -> None:
        if len(rows) == 0 or len(cols) == 0:
            return
        iou = slice_iou(compact[z0], compact[z1])[np.ix_(rows, cols)]
        for r, c, value in assign(iou, min_iou):
            a, b = offsets[z0] + rows[r], offsets[z1] + cols[c]
            has_next[a] = has_prev[b] = True
            edges.append((a, b))
            links.append((z0, z1, round(value, 4)))

    for z in range(len(stack) - 1):
        link(z, z + 1, np.arange(counts[z]), np.arange(counts[z + 1]))
    for k in range(2, int(max_gap) + 2):
        for z in range(len(stack) - k):
            ends = np.flatnonzero(~has_next[offsets[z] : offsets[z + 1]])
            starts = np.flatnonzero(~has_prev[offsets[z + k] : offsets[z + k + 1]])
            link(z, z + k, ends, starts)
    labels, count, dropped = _objects(
        compact, offsets, areas, edges, min_size / voxel, int(min_slices)
    )
    return Matched(labels, count, tuple(links), dropped)


def _objects(compact, offsets, areas, edges, min_voxels: float, min_slices: int):
    """(labels, count, dropped): the linked components as 3D objects, small or thin ones
    dropped, ids by decreasing volume."""
    n = int(offsets[-1])
    shape = (len(compact), *compact[0].shape) if compact else (0, 0, 0)
    if n == 0:
        return np.zeros(shape, np.uint32), 0, 0
    a, b = (np.array(v, np.int64) for v in zip(*edges, strict=True)) if edges else ([], [])
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    n_comp, component = connected_components(graph, directed=False)
    volume = np.bincount(component, weights=np.concatenate(areas), minlength=n_comp)
    slices = np.bincount(component, minlength=n_comp)  # one node per slice (module doc)
    keep = (volume >= min_voxels) & (slices >= min_slices)
    first = np.full(n_comp, n, np.int64)
    np.minimum.at(first, component, np.arange(n))
    order = [c for c in np.lexsort((first, -volume)) if keep[c]]
    new_id = np.zeros(n_comp, np.uint32)
    new_id[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    labels = np.zeros(shape, np.uint32)
    for z, ids in enumerate(compact):
        lut = np.concatenate([[0], new_id[component[offsets[z] : offsets[z + 1]]]])
        labels[z] = lut[ids]
    return labels, len(order), int(n_comp - len(order))


def _check_stack(slices) -> np.ndarray:
    """(Z, H, W) integer labels, or a ValueError saying what to give."""
    try:
        stack = np.asarray(slices) if not isinstance(slices, np.ndarray) else slices
    except ValueError as exc:
        raise ValueError(f"slices must all have one shape (H, W): {exc}") from None
    if stack.ndim != 3:
        raise ValueError(
            f"expected per-slice labels of shape (Z, H, W), got shape {stack.shape}: stack the "
            "2D label images of the slices along the first axis"
        )
    if stack.dtype == bool or not np.issubdtype(stack.dtype, np.integer):
        raise ValueError(f"labels must be integers (0 background), got dtype {stack.dtype}")
    if stack.size and stack.min() < 0:
        raise ValueError("labels must be >= 0 (0 background), got negative ids")
    return stack


def check_options(
    min_iou: float, scale: Sequence[float] | None, max_gap: int, min_slices: int
) -> float:
    """The volume of a voxel (``prod(scale)``), or a ValueError naming the bad option."""
    if not 0 < float(min_iou) <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    for name, value, least in (("max_gap", max_gap, 0), ("min_slices", min_slices, 1)):
        if int(value) != value or value < least:
            raise ValueError(f"{name} must be a whole number of slices >= {least}, got {value}")
    if scale is None:
        return 1.0
    values = np.asarray(scale, np.float64).ravel()
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"scale must be three positive (z, y, x) spacings, got {scale!r}")
    return float(np.prod(values))


__all__ = [
    "AUTOMATIC",
    "MAX_GAP",
    "MIN_IOU",
    "Matched",
    "assign",
    "check_options",
    "match_slices",
    "slice_iou",
]
