"""Benchmark worker for napari-sam-ms: ``python _ours_worker.py TASK CHECKPOINT OUT.json N``."""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
from _common import AMG_MANY, bench_image, emit, timed

from napari_sam_ms import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from napari_sam_ms.embedding_cache import EmbeddingCache, image_key


def main(task: str, checkpoint: str, out: str, repeats: int) -> None:
    t0 = time.perf_counter()
    sam = sam_model_registry["vit_b"](checkpoint=checkpoint)
    result: dict = {"task": task, "load_s": time.perf_counter() - t0}
    image = bench_image()
    if task == "encoder":
        pred = SamPredictor(sam)
        result.update(timed(lambda: pred.set_image(image), repeats))
    elif task == "click":
        pred = SamPredictor(sam)
        pred.set_image(image)
        pt, lb = np.array([[500, 380]]), np.array([1])
        result.update(timed(lambda: pred.predict(pt, lb, multimask_output=True), repeats, 2))
    elif task in ("amg_default", "amg_many"):
        gen = SamAutomaticMaskGenerator(sam, **({} if task == "amg_default" else AMG_MANY))
        masks: list = []
        result.update(timed(lambda: masks.__setitem__(slice(None), gen.generate(image)), 1, 0))
        result["n_masks"] = len(masks)
    elif task == "cache_hit":
        # An image seen before, in a new session: the embedding comes back from disk.
        pred = SamPredictor(sam)
        with tempfile.TemporaryDirectory() as tmp:
            key = image_key(image, "bench")
            pred.set_image(image)
            EmbeddingCache(cache_dir=tmp).put(key, pred.embedding, "bench")
            pred.reset_image()

            def hit() -> None:
                emb = EmbeddingCache(cache_dir=tmp).get(image_key(image, "bench"), "bench")
                pred.set_embedding(emb)

            result.update(timed(hit, repeats))
    else:
        raise SystemExit(f"unknown task {task}")
    emit(result, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
