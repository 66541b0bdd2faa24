"""Benchmark worker for Meta's reference (PyPI segment-anything on CPU torch).

Runs in an environment with torch + torchvision + segment-anything (no MindSpore):
``python _reference_worker.py TASK CHECKPOINT OUT.json``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import AMG_MANY, bench_image, emit, timed
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry


def main(task: str, checkpoint: str, out: str, repeats: int) -> None:
    torch.set_grad_enabled(False)
    sam = sam_model_registry["vit_b"](checkpoint=checkpoint)
    image = bench_image()
    result: dict = {"task": task, "torch": torch.__version__, "threads": torch.get_num_threads()}
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
    else:
        raise SystemExit(f"unknown task {task}")
    emit(result, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
