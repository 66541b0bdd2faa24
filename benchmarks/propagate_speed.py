"""Seconds per slice of propagation with cached slice embeddings (issue 26: <= 0.2 s).

A 40-slice 256 x 256 volume holding one long ellipsoid (through every slice) is propagated
from its middle slice with the embedded ``micro`` model. The first run embeds every slice
(into a memory cache); the timed runs reuse those embeddings, so they measure what a user
waits for once a stack's embeddings are precomputed: prompts from the previous mask, the
decoder, and the stop checks.

    python benchmarks/propagate_speed.py [--repeats 3] [--prompt box]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.loader import load_model, make_predictor
from napari_sam_ms.propagate import DEFAULT_PROMPT, propagate_object

SHAPE = (40, 256, 256)


def volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 volume, truth): one ellipsoid whose radius changes slowly along z."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    radius = 9 + 3 * np.sin(zz / SHAPE[0] * np.pi)  # nucleus-sized, as the model knows
    truth = ((yy - 128 - zz / 4) ** 2 + (xx - 120) ** 2) <= radius**2
    image = np.where(truth, 170.0, 25.0)
    image = ndimage.gaussian_filter(image, (0, 1.0, 1.0)) + rng.normal(0, 10, SHAPE)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    args = parser.parse_args()

    image, truth = volume()
    loaded = load_model()
    predictor = make_predictor(loaded)
    cache = EmbeddingCache(cache_dir=False, max_items=SHAPE[0] + 4)
    options = dict(model=loaded, predictor=predictor, cache=cache, prompt=args.prompt)
    z = SHAPE[0] // 2
    point = [[120, 128 + z / 4]]

    start = time.perf_counter()
    first = propagate_object(image, z=z, points=point, labels=[1], **options)
    cold = time.perf_counter() - start
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = propagate_object(image, z=z, points=point, labels=[1], **options)
        runs.append(time.perf_counter() - start)
        assert np.array_equal(result.mask, first.mask)
    slices = SHAPE[0]  # the clicked slice and every other one are predicted once
    iou = np.count_nonzero(first.mask & truth) / np.count_nonzero(first.mask | truth)
    report = {
        "model": loaded.model_type,
        "mirror_average": loaded.mirror_average,
        "prompt": args.prompt,
        "volume": list(SHAPE),
        "slices_with_object": len(first.slices),
        "stops": dict(first.stops),
        "first_run_s (embeds every slice, compiles)": round(cold, 2),
        "cached_runs_s": [round(r, 3) for r in runs],
        "seconds_per_slice_cached": round(min(runs) / slices, 4),
        "target_s_per_slice": 0.2,
        "iou_3d": round(float(iou), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
