"""Benchmark worker for Meta's reference (PyPI segment-anything on CPU torch).

Runs in an environment with torch + torchvision + segment-anything (no MindSpore):
``python _reference_worker.py TASK CHECKPOINT OUT.json REPEATS``.
"""

from __future__ import annotations

import sys

import torch
from _common import emit, run_task
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry


def main(task: str, checkpoint: str, out: str, repeats: int) -> None:
    torch.set_grad_enabled(False)
    sam = sam_model_registry["vit_b"](checkpoint=checkpoint)
    result = run_task(task, sam, SamPredictor, SamAutomaticMaskGenerator, repeats)
    if result is None:
        raise SystemExit(f"unknown task {task}")
    emit(
        {"task": task, "torch": torch.__version__, "threads": torch.get_num_threads(), **result},
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
