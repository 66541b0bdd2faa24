"""Pieces shared by the synthetic kinds (:mod:`.synthetic`, :mod:`.synthetic_wide`): the
sample record and cytoplasm-like cells (labels and signal)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, filters, segmentation

from .styles import Style

MAX_HIDDEN = 0.4  # largest fraction of a nucleus a later one may cover


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image.

    Attributes:
        image: (H, W) uint8 or uint16 grayscale.
        labels: (H, W) uint16 instance ids 1..N (contiguous), 0 = background.
        masks: (N, H, W) bool, the full drawn shape of object ``k + 1`` (before occlusion;
            ``labels == k + 1`` is always a subset of ``masks[k]``).
        kind: ``nuclei``, ``cells`` or ``wide``.
        seed: the seed it was made from.
        style: the drawn parameters of a ``wide`` sample (None for the other kinds).
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    kind: str
    seed: int
    style: Style | None = None


def _cell_labels(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Touching irregular cells: compact watershed of a wavy landscape inside blobs."""
    h, w = shape
    radius = rng.uniform(14.0, 30.0) * scale
    fill = rng.uniform(0.3, 0.85)
    target = max(1, int(fill * h * w / (np.pi * radius**2)))
    seeds: list[tuple[float, float, float]] = []
    for _ in range(30 * target):
        if len(seeds) >= target:
            break
        r = radius * float(np.exp(rng.normal(0, 0.2)))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (0.9 * (r + q)) ** 2 for y, x, q in seeds):
            seeds.append((cy, cx, r))
    blobby = rng.uniform(0.8, 2.5)
    foreground = np.zeros(shape, bool)
    markers = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(seeds, start=1):
        blob = _polygon_mask(*_shape_polygon(rng, r * 1.3, r * 1.1, blobby), cy, cx, shape)
        foreground |= blob
        markers[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))] = k
    markers[~foreground] = 0
    wavy = filters.gaussian(rng.standard_normal(shape), sigma=radius / 3)
    wavy = (wavy - wavy.mean()) / (wavy.std() + 1e-9)
    regions = segmentation.watershed(wavy, markers, mask=foreground, compactness=0.01)
    regions = _largest_parts(regions)
    min_area = 0.15 * np.pi * radius**2
    sizes = np.bincount(regions.ravel())
    small = np.flatnonzero(sizes < min_area)
    regions[np.isin(regions, small[small > 0])] = 0
    return segmentation.relabel_sequential(regions)[0].astype(np.int32)


def _largest_parts(regions: np.ndarray) -> np.ndarray:
    """Keep only the largest connected piece of each region."""
    out = np.zeros_like(regions)
    for k, sl in enumerate(ndi.find_objects(regions), start=1):
        if sl is None:
            continue
        parts, n = ndi.label(regions[sl] == k)
        if n == 0:
            continue
        biggest = np.argmax(np.bincount(parts.ravel())[1:]) + 1
        out[sl][parts == biggest] = k
    return out


# ---------------------------------------------------------------------------------------
# Intensities and acquisition
# ---------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    t = filters.gaussian(rng.standard_normal(shape), sigma=sigma)
    return t / (t.std() + 1e-9)


def _nuclei_signal(
    rng: np.random.Generator, masks: np.ndarray, brightness: np.ndarray, scale: float
) -> np.ndarray:
    """Sum of the nuclei's textured intensities (overlaps add, as in a projection)."""
    shape = masks.shape[1:]
    texture = 1 + rng.uniform(0.1, 0.35) * _texture(rng, shape, rng.uniform(0.8, 2.5) * scale)
    edge = rng.uniform(1.0, 4.0) * scale  # soft rim width
    signal = np.zeros(shape)
    for mask, b in zip(masks, brightness, strict=True):
        sl = _bbox(mask, pad=1)
        depth = ndi.distance_transform_edt(mask[sl])
        signal[sl] += b * (1 - np.exp(-(depth + 0.5) / edge)) * mask[sl]
    return np.clip(signal * texture, 0, None)


def _cell_signal(rng: np.random.Generator, labels: np.ndarray, scale: float) -> np.ndarray:
    """Textured cytoplasm, a dimmer nucleus inside each cell, dim membranes."""
    shape = labels.shape
    n = int(labels.max())
    level = np.concatenate([[0.0], rng.uniform(0.35, 1.0, n)])
    signal = level[labels]
    texture = 1 + rng.uniform(0.15, 0.4) * _texture(rng, shape, rng.uniform(1.0, 3.0) * scale)
    depth = ndi.distance_transform_edt(labels > 0)
    signal = signal * (0.55 + 0.45 * (1 - np.exp(-depth / (4 * scale)))) * texture
    if rng.random() < 0.7:  # nuclei excluded from the cytoplasm stain
        for sl_k, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            inner = ndi.binary_erosion(labels[sl] == sl_k, iterations=max(2, int(5 * scale)))
            if inner.sum() < 10:
                continue
            rows, cols = np.nonzero(inner)
            i = rng.integers(len(rows))
            r = np.sqrt(inner.sum() / np.pi) * rng.uniform(0.35, 0.55)
            rr, cc = draw.ellipse(rows[i], cols[i], r, r * rng.uniform(0.7, 1.0), inner.shape)
            keep = inner[rr, cc]
            sub = signal[sl]
            sub[rr[keep], cc[keep]] *= rng.uniform(0.35, 0.7)
    if rng.random() < 0.6:  # membranes dimmer than the cytoplasm
        edges = segmentation.find_boundaries(labels, mode="inner")
        signal = np.where(edges, signal * rng.uniform(0.5, 0.8), signal)
    return np.clip(signal, 0, None)


def _shape_polygon(
    rng: np.random.Generator, a: float, b: float, blobby: float, n: int = 48
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) offsets of a rotated ellipse with a random low-frequency wobble."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += blobby * rng.normal(0, 0.12 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.6, 1.5)
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    phi = rng.uniform(0, np.pi)
    c, s = np.cos(phi), np.sin(phi)
    return x * s + y * c, x * c - y * s


def _polygon_mask(
    rows: np.ndarray, cols: np.ndarray, cy: float, cx: float, shape: tuple[int, int]
) -> np.ndarray:
    mask = np.zeros(shape, bool)
    rr, cc = draw.polygon(rows + cy, cols + cx, shape=shape)
    mask[rr, cc] = True
    return mask


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    """Slices of the bounding box of a non-empty mask, grown by ``pad`` within the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, h)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, w)),
    )
