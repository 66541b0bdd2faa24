"""Benchmark worker for napari-sam-ms:
``python _ours_worker.py TASK CHECKPOINT OUT.json N [MODEL]`` (MODEL: vit_b, the default, or
vit_t)."""

from __future__ import annotations

import sys
import tempfile
import time

from _common import bench_image, emit, run_task, timed

from napari_sam_ms import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from napari_sam_ms.embedding_cache import EmbeddingCache, image_key


def cache_hit(sam, repeats: int) -> dict:
    """An image seen before, in a new session: the embedding comes back from disk."""
    image = bench_image()
    pred = SamPredictor(sam)
    with tempfile.TemporaryDirectory() as tmp:
        pred.set_image(image)
        EmbeddingCache(cache_dir=tmp).put(image_key(image, "bench"), pred.embedding, "bench")
        pred.reset_image()

        def hit() -> None:
            emb = EmbeddingCache(cache_dir=tmp).get(image_key(image, "bench"), "bench")
            pred.set_embedding(emb)

        return timed(hit, repeats)


def main(task: str, checkpoint: str, out: str, repeats: int, model: str = "vit_b") -> None:
    t0 = time.perf_counter()
    sam = sam_model_registry[model](checkpoint=checkpoint)
    load_s = time.perf_counter() - t0
    if task == "cache_hit":
        result = cache_hit(sam, repeats)
    else:
        result = run_task(task, sam, SamPredictor, SamAutomaticMaskGenerator, repeats)
    if result is None:
        raise SystemExit(f"unknown task {task}")
    emit({"task": task, "model": model, "load_s": load_s, **result}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
