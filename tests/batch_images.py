"""Small synthetic inputs and options shared by the batch tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SIDE = 128
# Few points and no filters: fast, and every image gets some labels from the tiny model.
FAST = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
FAST_ARGS = [
    "--points-per-side",
    "4",
    "--pred-iou-thresh",
    "0",
    "--stability-score-thresh",
    "0",
    "--no-progress",
]


def blobs(seed: int, side: int = SIDE) -> np.ndarray:
    """A uint16 plane with a few bright disks of different sizes on a noisy background."""
    rng = np.random.default_rng(seed)
    plane = (rng.random((side, side)) * 3000).astype(np.uint16)
    yy, xx = np.mgrid[:side, :side]
    for _ in range(3 + seed % 3):
        cy, cx = rng.integers(16, side - 16, 2)
        r = int(rng.integers(6, 14))
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 30000
    return plane


def make_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` inputs ``img<k>``: TIFFs (16-bit) and PNGs (8-bit RGB) alternately."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + n):
        plane = blobs(k)
        if k % 2:
            path = folder / f"img{k}.png"
            Image.fromarray(np.stack([(plane // 256).astype(np.uint8)] * 3, axis=-1)).save(path)
        else:
            path = folder / f"img{k}.tif"
            tifffile.imwrite(path, plane)
        paths.append(path)
    return paths


def output_names(paths: list[Path]) -> list[str]:
    """The label images and sidecars of ``paths``, sorted."""
    return sorted(f"{p.stem}_labels.{ext}" for p in paths for ext in ("tif", "json"))
