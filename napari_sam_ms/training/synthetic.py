"""Synthetic microscopy images with exact instance labels, reproducible by seed.

- ``nuclei``: fluorescent nuclei, ellipses and blobby star-convex shapes with textured
  intensity, sparse to crowded; some images let nuclei touch and overlap. Overlap is
  *in projection*: intensities add where nuclei overlap, and in the labels **the later
  object occludes** the earlier one. A placement is refused if it would hide more than
  ``MAX_HIDDEN`` of an earlier nucleus or split it in two, so every label stays one
  connected, mostly visible object.
- ``cells``: cytoplasm-like cells, larger irregular shapes that tile clusters (touching,
  no gaps between neighbours): a compact watershed of a wavy landscape inside a union of
  blobs. Per-cell brightness, texture, an excluded nucleus and dim membranes.

Both then get uneven illumination, out-of-focus haze, optical blur, shot (Poisson) and
read (Gaussian) noise, and are written as 8- or 16-bit. ``invert=True`` gives dark objects
on a bright background (a transmitted-light look) for tests on another modality.

Sizes scale with the image: objects of a ``(512, 512)`` sample are twice those of a
``(256, 256)`` one, so both look alike once resized to the model input. A third kind, ``wide``,
draws each image from its own style across real microscopy's range (:mod:`.synthetic_wide`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from skimage import filters, measure

from .styles import StyleOverrides
from .synthetic_parts import (  # noqa: F401  (SyntheticSample, MAX_HIDDEN: public here too)
    MAX_HIDDEN,
    SyntheticSample,
    _bbox,
    _cell_labels,
    _cell_signal,
    _nuclei_signal,
    _polygon_mask,
    _shape_polygon,
)

KINDS = ("nuclei", "cells")  # the original kinds; ``wide`` is dispatched to synthetic_wide

# Disjoint seed ranges: training, validation during training, and the held-out test set.
TRAIN_SEEDS = range(0, 1_000_000)
VAL_SEEDS = range(1_000_000, 1_100_000)
TEST_SEEDS = range(2_000_000, 2_100_000)


def make_sample(
    seed: int,
    kind: str = "nuclei",
    shape: tuple[int, int] = (256, 256),
    bit_depth: int | None = None,
    invert: bool = False,
    scale: float | None = None,
    styles: StyleOverrides | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of one synthetic image; see :func:`render_sample`."""
    sample = render_sample(seed, kind, shape, bit_depth, invert, scale, styles)
    return sample.image, sample.labels


def render_sample(
    seed: int,
    kind: str = "nuclei",
    shape: tuple[int, int] = (256, 256),
    bit_depth: int | None = None,
    invert: bool = False,
    scale: float | None = None,
    styles: StyleOverrides | None = None,
) -> SyntheticSample:
    """Generate one image with its exact labels (same seed, same arguments: same output).

    Args:
        seed: non-negative integer; the kind is mixed into the random stream, so ``nuclei``
            and ``cells`` with one seed are unrelated images.
        kind: ``nuclei``, ``cells`` or ``wide``.
        shape: (H, W) in pixels, each at least 32.
        bit_depth: 8 (uint8) or 16 (uint16); None: 8 (``wide``: drawn; also 12, in uint16).
        invert: dark objects on a bright background.
        scale: object size factor (default: ``min(shape) / 256``, i.e. sizes follow the
            image size).
        styles: ``wide`` only: style families held out or kept, fixed style parameters.
    """
    if kind == "wide":
        from .synthetic_wide import render_wide

        return render_wide(seed, shape, bit_depth, invert, scale, styles)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS + ('wide',)}")
    bit_depth = 8 if bit_depth is None else bit_depth
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 32:
        raise ValueError(f"shape must be at least 32 x 32, got {shape}")
    rng = np.random.default_rng([int(seed), KINDS.index(kind)])
    scale = min(shape) / 256.0 if scale is None else float(scale)
    if kind == "nuclei":
        masks, brightness = _nuclei_masks(rng, shape, scale)
        labels = _occlusion_labels(masks)
        signal = _nuclei_signal(rng, masks, brightness, scale)
    else:
        labels = _cell_labels(rng, shape, scale)
        masks = (
            np.stack([labels == k for k in range(1, int(labels.max()) + 1)])
            if labels.any()
            else np.zeros((0,) + shape, bool)
        )
        signal = _cell_signal(rng, labels, scale)
    image = _acquire(rng, signal, scale, bit_depth, invert)
    return SyntheticSample(image, labels.astype(np.uint16), masks, kind, int(seed))


def iterate_samples(
    seeds: Iterable[int],
    kind: str = "nuclei",
    shape: tuple[int, int] = (256, 256),
    bit_depth: int | None = None,
    invert: bool = False,
    styles: StyleOverrides | None = None,
) -> Iterator[SyntheticSample]:
    """Yield one sample per seed.

    ``kind="mixed"`` alternates by seed parity (even: nuclei, odd: cells); ``bit_depth=None``
    picks 8 or 16 bits from the seed (every third seed is 16-bit; ``wide``: from its style).
    """
    for seed in seeds:
        k = _kind_of(kind, seed)
        yield render_sample(seed, k, shape, _depth_of(bit_depth, seed, k), invert, None, styles)


class SyntheticDataset(Sequence):
    """A fixed, indexable set of samples: item ``i`` is made from ``seeds[i]`` on demand.

    Args:
        n: number of samples.
        kind: ``nuclei``, ``cells`` or ``mixed``.
        split: ``train``, ``val`` or ``test`` (disjoint seed ranges), or a starting seed.
        shape, bit_depth, invert, styles: as :func:`iterate_samples`.
        scale: object size factor, as :func:`render_sample`; a ``(low, high)`` pair draws
            each item's factor log-uniformly from that range (fixed by its seed).
    """

    def __init__(
        self,
        n: int,
        kind: str = "nuclei",
        split: str | int = "train",
        shape: tuple[int, int] = (256, 256),
        bit_depth: int | None = None,
        invert: bool = False,
        scale: float | tuple[float, float] | None = None,
        styles: StyleOverrides | None = None,
    ) -> None:
        starts = {"train": TRAIN_SEEDS.start, "val": VAL_SEEDS.start, "test": TEST_SEEDS.start}
        start = starts[split] if isinstance(split, str) else int(split)
        self.seeds = range(start, start + int(n))
        self.kind, self.shape, self.bit_depth, self.invert = kind, shape, bit_depth, invert
        self.scale, self.styles = scale, styles

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        seed = self.seeds[i]
        kind = _kind_of(self.kind, seed)
        depth, scale = _depth_of(self.bit_depth, seed, kind), self._scale_of(seed)
        return render_sample(seed, kind, self.shape, depth, self.invert, scale, self.styles)

    def _scale_of(self, seed: int) -> float | None:
        if self.scale is None or np.isscalar(self.scale):
            return self.scale
        low, high = (float(v) for v in self.scale)  # type: ignore[union-attr]
        u = np.random.default_rng([int(seed), 7]).random()
        return float(low * (high / low) ** u)


def _kind_of(kind: str, seed: int) -> str:
    return ("nuclei", "cells")[seed % 2] if kind == "mixed" else kind


def _depth_of(bit_depth: int | None, seed: int, kind: str = "nuclei") -> int | None:
    return bit_depth if kind == "wide" or bit_depth is not None else (16 if seed % 3 == 0 else 8)


# ---------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------


def _nuclei_masks(
    rng: np.random.Generator, shape: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full masks of the placed nuclei (drawing order) and their brightness."""
    h, w = shape
    radius = rng.uniform(5.0, 13.0) * scale
    spread = rng.uniform(0.15, 0.35)  # size variation within the image
    fill = rng.uniform(0.08, 0.45)
    target = max(1, int(fill * h * w / (np.pi * radius**2)))
    allow_overlap = rng.random() < 0.5
    cluster = rng.uniform(0.0, 0.6)  # chance to place next to an existing nucleus
    blobby = rng.uniform(0.0, 2.0)
    owner = np.zeros(shape, np.int32)  # current visible owner, 1-based
    masks: list[np.ndarray] = []
    areas: list[int] = []
    radii: list[tuple[float, float, float]] = []
    for _ in range(8 * target):
        if len(masks) >= target:
            break
        r = radius * float(np.exp(rng.normal(0, spread)))
        a, b = r * rng.uniform(1.0, 1.5), r * rng.uniform(0.7, 1.0)
        if radii and rng.random() < cluster:
            cy0, cx0, r0 = radii[rng.integers(len(radii))]
            ang = rng.uniform(0, 2 * np.pi)
            d = (r0 + r) * rng.uniform(0.75, 1.05)
            cy, cx = cy0 + d * np.sin(ang), cx0 + d * np.cos(ang)
        else:
            cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        mask = _polygon_mask(*_shape_polygon(rng, a, b, blobby), cy, cx, shape)
        area = int(mask.sum())
        if area < max(12, 0.25 * np.pi * a * b):  # mostly outside the image
            continue
        if not _placement_ok(owner, mask, areas, allow_overlap):
            continue
        masks.append(mask)
        areas.append(area)
        radii.append((cy, cx, r))
        owner[mask] = len(masks)
    brightness = rng.uniform(0.4, 1.0, len(masks)) * rng.uniform(0.7, 1.0)
    stack = np.stack(masks) if masks else np.zeros((0,) + shape, bool)
    return stack, brightness


def _placement_ok(owner: np.ndarray, mask: np.ndarray, areas: list[int], overlap: bool) -> bool:
    """May ``mask`` be drawn on top without hiding too much of, or splitting, another?"""
    covered = owner[mask]
    hit = np.unique(covered[covered > 0])
    if hit.size == 0:
        return True
    if not overlap:
        return False
    for k in hit:
        sl = _bbox(owner == k)
        keep = (owner[sl] == k) & ~mask[sl]
        if keep.sum() < (1 - MAX_HIDDEN) * areas[k - 1]:
            return False
        if measure.label(keep, connectivity=1).max() != 1:
            return False
    return True


def _occlusion_labels(masks: np.ndarray) -> np.ndarray:
    """Paint masks in drawing order (later occludes earlier): ids 1..N."""
    labels = np.zeros(masks.shape[1:], np.int32)
    for k, mask in enumerate(masks, start=1):
        labels[mask] = k
    return labels


def _acquire(
    rng: np.random.Generator, signal: np.ndarray, scale: float, bit_depth: int, invert: bool
) -> np.ndarray:
    """Blur, illumination, haze, noise and digitisation of a [0, ~1] signal."""
    h, w = signal.shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    blurred = filters.gaussian(signal, sigma=rng.uniform(0.5, 2.0) * scale)
    haze = filters.gaussian(signal, sigma=rng.uniform(8, 20) * scale) * rng.uniform(0.0, 0.4)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    vignette = 1 - rng.uniform(0.0, 0.5) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    gradient = 1 + rng.uniform(-0.3, 0.3) * (xx - 0.5) + rng.uniform(-0.3, 0.3) * (yy - 0.5)
    background = rng.uniform(0.02, 0.2)
    light = (blurred + haze) * vignette * gradient
    if invert:
        light = 1.1 - np.clip(light, 0, None) * rng.uniform(0.5, 0.9)
    light = np.clip(light + background, 0, None)
    photons = float(np.exp(rng.uniform(np.log(50), np.log(3000))))  # at signal 1
    counts = rng.poisson(light * photons).astype(np.float64)
    counts += rng.normal(0, rng.uniform(0.5, 4.0), signal.shape)
    if bit_depth == 16:
        gain = rng.uniform(1.0, 15.0)
        return np.clip(100 + gain * counts, 0, 65535).astype(np.uint16)
    top = np.percentile(counts, 99.9) + 1e-9
    contrast = rng.uniform(0.4, 1.15) * 255 / top
    return np.clip(rng.uniform(0, 12) + contrast * counts, 0, 255).astype(np.uint8)


__all__ = [
    "KINDS",
    "TEST_SEEDS",
    "TRAIN_SEEDS",
    "VAL_SEEDS",
    "SyntheticDataset",
    "SyntheticSample",
    "iterate_samples",
    "make_sample",
    "render_sample",
]
