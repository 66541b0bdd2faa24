"""Synthetic volumes with ground truth, shared by the volume tests and benchmarks.

Nucleus-like ellipsoids (bright, varied brightness, blurred in xy, noise) in a dark field;
radii are (z, y, x) in voxels, so z radii of a few slices against xy radii of 6..16 pixels
make the volumes anisotropic (few slices per object, as in confocal stacks with coarse z
steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from napari_sam_ms.volumes.match3d import slice_iou

SHAPE = (12, 160, 160)
# (center z, y, x), (radius z, y, x); the second field's first two touch at x = 69.
FIELDS = [
    [
        ((6, 40, 40), (4.5, 12, 10)),
        ((5, 45, 115), (3.5, 8, 8)),
        ((7, 115, 45), (5, 14, 11)),
        ((6, 110, 115), (2.5, 7, 9)),
    ],
    [
        ((6, 80, 58), (4, 11, 11)),
        ((6, 80, 80), (4, 11, 11)),
        ((4, 30, 130), (3, 9, 12)),
        ((8, 130, 130), (3.5, 6, 7)),
    ],
]
# A third field for volumetric automatic segmentation: more objects, sizes 5..16 px, a
# second touching pair (touching at y = 117), thin objects (z radii 2..2.5 slices).
CROWDED = [
    ((5, 30, 30), (3, 16, 14)),
    ((6, 28, 90), (2, 5, 6)),
    ((6, 40, 135), (4, 9, 9)),
    ((4, 85, 30), (2.5, 7, 7)),
    ((7, 80, 85), (4, 13, 13)),
    ((6, 105, 130), (3.5, 12, 10)),
    ((6, 129, 130), (3.5, 12, 10)),
    ((8, 135, 40), (2, 10, 8)),
]
AUTO_FIELDS = [*FIELDS, CROWDED]
# Not used to choose any setting: checks that the chosen ones carry over (seed 10).
HELD_OUT = [
    ((6, 35, 45), (4, 12, 12)),
    ((5, 35, 69), (3, 12, 12)),
    ((7, 40, 120), (3, 7, 9)),
    ((6, 95, 30), (5, 9, 8)),
    ((4, 100, 85), (2.5, 14, 12)),
    ((7, 130, 130), (4, 10, 14)),
]
# A short stack for a quick test: 7 slices, a touching pair (at x = 66), z radii 2.5..3.
SHORT_SHAPE = (7, 160, 160)
SHORT = [
    ((3, 45, 45), (3, 11, 11)),
    ((3, 45, 66), (3, 9, 10)),
    ((3, 110, 50), (2.5, 8, 8)),
    ((3, 95, 120), (3, 13, 11)),
]


def ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """A boolean ellipsoid of ``shape``."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii, strict=True)) <= 1.0
    )


def field(objects, seed: int, shape: Sequence[int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 volume, labels): bright ellipsoids of varied brightness, blur and noise; an
    ellipsoid's voxels already taken by an earlier one stay the earlier one's."""
    shape = tuple(shape)
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    image = np.full(shape, 25.0)
    for i, (center, radii) in enumerate(objects, 1):
        inside = ellipsoid(shape, center, radii) & (labels == 0)
        labels[inside] = i
        image[inside] = rng.uniform(120, 200)
    image = ndimage.gaussian_filter(image, (0, 1.0, 1.0)) + rng.normal(0, 10, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def iou3d(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean volumes."""
    return float(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))


def f1_at(truth: np.ndarray, found: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Instance F1 of ``found`` against ``truth`` (label volumes, ids 1..n each): objects
    paired one to one by linear assignment on IoU, a pair with IoU >= ``threshold`` is a
    true positive. Returns tp, n_true, n_found, precision, recall, f1 and mean IoU of tps."""
    truth = np.unique(truth, return_inverse=True)[1].reshape(truth.shape)
    found = np.unique(found, return_inverse=True)[1].reshape(found.shape)
    n_true, n_found = int(truth.max()), int(found.max())
    iou = slice_iou(truth, found)
    tp, ious = 0, []
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        ious = [iou[r, c] for r, c in zip(rows, cols, strict=True) if iou[r, c] >= threshold]
        tp = len(ious)
    return {
        "tp": tp,
        "n_true": n_true,
        "n_found": n_found,
        "precision": tp / n_found if n_found else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2 * tp / (n_true + n_found) if n_true + n_found else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
    }


# A time-lapse (T, Y, X): blobs moving 2 px per frame; blob 3 divides at DIVISION into two
# daughters (ids 4 and 5) moving apart.
TIMELAPSE_SHAPE = (10, 160, 160)
DIVISION = 6
MOVERS = [((40, 40), (2, 1), 10), ((110, 50), (-1, 2), 9), ((80, 115), (1, -1), 11)]


def timelapse(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames, labels): ``MOVERS`` as (start (y, x), step (dy, dx), radius)."""
    t_n, h, w = TIMELAPSE_SHAPE
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    labels = np.zeros(TIMELAPSE_SHAPE, np.uint8)
    image = np.full(TIMELAPSE_SHAPE, 25.0)
    brightness = rng.uniform(120, 200, 5)
    for t in range(t_n):
        blobs = []
        for i, ((y0, x0), (dy, dx), r) in enumerate(MOVERS, 1):
            y, x = y0 + dy * t, x0 + dx * t
            if i == 3 and t >= DIVISION:  # two daughters, 0.7 of the radius, moving apart
                k = t - DIVISION + 1
                blobs += [(4, y - 4 - 2 * k, x, 0.7 * r), (5, y + 4 + 2 * k, x, 0.7 * r)]
            else:
                blobs.append((i, y, x, r))
        for i, y, x, r in blobs:
            inside = ((yy - y) ** 2 + (xx - x) ** 2 <= r**2) & (labels[t] == 0)
            labels[t][inside] = i
            image[t][inside] = brightness[i - 1]
    image = ndimage.gaussian_filter(image, (0, 1.0, 1.0)) + rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels
