"""A synthetic fluorescence image: nuclei on an uneven background with noise (numpy only)."""

from __future__ import annotations

import numpy as np
from skimage.filters import gaussian


def fluorescent_nuclei(
    shape: tuple[int, int] = (512, 512),
    n_nuclei: int = 45,
    seed: int = 0,
    return_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A 16-bit image of bright, textured, elliptical nuclei (seeded, reproducible).

    Uneven illumination, out-of-focus haze and shot plus camera noise make it look like a
    widefield micrograph, so contrast limits and dtype handling get exercised. With
    ``return_labels`` also the true (H, W) uint16 labels (nucleus ``k`` is id ``k + 1``;
    where two nuclei touch, the later one wins).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    signal = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint16)
    placed: list[tuple[float, float, float]] = []
    radius = min(h, w) / 28
    tries = 0
    while len(placed) < n_nuclei and tries < 50 * n_nuclei:
        tries += 1
        r = radius * rng.uniform(0.7, 1.4)
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (0.9 * (r + q)) ** 2 for y, x, q in placed):
            continue
        placed.append((cy, cx, r))
        theta = rng.uniform(0, np.pi)
        a, b = r * rng.uniform(1.0, 1.4), r * rng.uniform(0.7, 1.0)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        inside = np.clip(1.0 - (u**2 + v**2), 0, None)
        signal += rng.uniform(0.5, 1.0) * np.sqrt(inside) * (inside > 0)
        labels[inside > 0] = len(placed)
    texture = _blur(rng.standard_normal(shape).astype(np.float32), 1.5)
    signal = _blur(signal * (1 + 0.6 * texture), 1.2)
    haze = _blur(signal, 12) * 0.6
    gradient = 0.25 + 0.2 * (xx / w) + 0.1 * np.sin(yy / h * np.pi)
    photons = 1200 * signal + 500 * haze + 300 * gradient
    noisy = rng.poisson(np.clip(photons, 0, None)).astype(np.float32)
    noisy += rng.normal(100, 8, shape)  # camera offset and read noise
    image = np.clip(noisy, 0, 65535).astype(np.uint16)
    return (image, labels) if return_labels else image


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian(image, sigma=sigma, preserve_range=True).astype(np.float32)


def make_sample_data() -> list[tuple]:
    """napari sample-data contribution (LayerData tuples)."""
    image = fluorescent_nuclei()
    lo, hi = np.percentile(image, [0.5, 99.8])
    meta = {
        "name": "nuclei (synthetic)",
        "colormap": "gray",
        "contrast_limits": (float(lo), float(hi)),
    }
    return [(image, meta, "image")]


__all__ = ["fluorescent_nuclei", "make_sample_data"]
