"""Shared pieces of the benchmark workers (imported by both sides; numpy only)."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The "postprocessing-bound" whole-image setting: hundreds of masks survive. With the
# benchmark's random weights every mask's box is the whole image and stability scores are 0,
# so box NMS below 1.0 keeps one mask: NMS is off (1.0) and the predicted-IoU threshold
# (random-weight scores lie in about -0.06..0.09) keeps 418 of the 3072 candidates.
AMG_MANY = dict(pred_iou_thresh=0.05, stability_score_thresh=0.0, box_nms_thresh=1.0)
AMG_MANY_MIN_MASKS = 100  # fewer: the setting no longer measures what the row says


def bench_image(h: int = 768, w: int = 1024) -> np.ndarray:
    """A deterministic microscopy-like RGB test image: blobs on an uneven background."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 40 + 30 * np.sin(xx / 180.0) * np.cos(yy / 140.0)
    for _ in range(60):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(8, 40, 2)
        img += 150 * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    img += rng.normal(0, 8, img.shape)
    gray = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([gray, (gray * 0.8).astype(np.uint8), gray], axis=-1)


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Run ``fn`` warmup + repeats times; median and all times in seconds."""
    first = None
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "times_s": times, "first_s": first}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict, out: str) -> None:
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))
    print(json.dumps(result), file=sys.stderr)


def run_task(task: str, sam, predictor_cls, generator_cls, repeats: int) -> dict | None:
    """Time one of the tasks both sides share; None if ``task`` is not one of them."""
    image = bench_image()
    if task == "encoder":
        pred = predictor_cls(sam)
        return timed(lambda: pred.set_image(image), repeats)
    if task == "click":
        pred = predictor_cls(sam)
        pred.set_image(image)
        pt, lb = np.array([[500, 380]]), np.array([1])
        # Clicks take tens of milliseconds and the machine's noise is of the same order:
        # ten times as many samples for the median.
        return timed(lambda: pred.predict(pt, lb, multimask_output=True), 10 * repeats, 2)
    if task in ("amg_default", "amg_many"):
        gen = generator_cls(sam, **({} if task == "amg_default" else AMG_MANY))
        masks: list = []
        result = timed(lambda: masks.__setitem__(slice(None), gen.generate(image)), 1, 0)
        return {**result, "n_masks": len(masks)}
    return None
