"""The backend imports no Qt, napari or magicgui (napari-animation's split)."""

from __future__ import annotations

import json
import subprocess
import sys

BACKEND = [
    "napari_sam_ms",
    "napari_sam_ms.predictor",
    "napari_sam_ms.build_sam",
    "napari_sam_ms.automatic_mask_generator",
    "napari_sam_ms.bridge",
    "napari_sam_ms.embedding_cache",
    "napari_sam_ms.pipeline",
    "napari_sam_ms.amg_refine",
    "napari_sam_ms.sample_data",
    "napari_sam_ms.utils.labels",
]
FORBIDDEN = ["qtpy", "napari", "magicgui", "PyQt6", "PyQt5", "PySide2", "PySide6"]


def test_backend_imports_leave_qt_out():
    code = (
        "import importlib, json, sys\n"
        f"for m in {BACKEND!r}: importlib.import_module(m)\n"
        "import napari_sam_ms as p; [getattr(p, n) for n in p.__all__]\n"
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
