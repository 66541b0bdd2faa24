"""Benchmark worker for the reference implementations on CPU torch: Meta's segment-anything,
or MobileSAM's code (PyPI mobilesam-mirror) for vit_t.

Runs in an environment with torch + torchvision + segment-anything (+ timm and
mobilesam-mirror for vit_t; no MindSpore):
``python _reference_worker.py TASK CHECKPOINT OUT.json REPEATS [MODEL]``.
"""

from __future__ import annotations

import sys

import torch
from _common import emit, run_task


def main(task: str, checkpoint: str, out: str, repeats: int, model: str = "vit_b") -> None:
    torch.set_grad_enabled(False)
    if model == "vit_t":
        from mobile_sam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
    else:
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
    # eval() after loading, as MobileSAM's README does: its TinyViT attention caches the
    # loaded attention biases there (build_sam_vit_t calls eval() before loading).
    sam = sam_model_registry[model](checkpoint=checkpoint).eval()
    result = run_task(task, sam, SamPredictor, SamAutomaticMaskGenerator, repeats)
    if result is None:
        raise SystemExit(f"unknown task {task}")
    emit(
        {
            "task": task,
            "model": model,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **result,
        },
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
