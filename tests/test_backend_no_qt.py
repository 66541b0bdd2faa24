"""Nothing outside ``_qt/`` imports Qt, napari, magicgui or psygnal (napari-animation's split)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import napari_sam_ms

FORBIDDEN = ["qtpy", "napari", "magicgui", "psygnal", "PyQt6", "PyQt5", "PySide2", "PySide6"]


def backend_modules() -> list[str]:
    """Every module of the package outside ``napari_sam_ms._qt`` (CLI, weights, training...)."""
    names = ["napari_sam_ms"]
    for info in pkgutil.walk_packages(napari_sam_ms.__path__, prefix="napari_sam_ms."):
        if info.name == "napari_sam_ms._qt" or info.name.startswith("napari_sam_ms._qt."):
            continue
        names.append(info.name)
    return sorted(names)


def test_the_walk_finds_every_layer():
    names = set(backend_modules())
    expected = {
        "napari_sam_ms.cli",
        "napari_sam_ms.loader",
        "napari_sam_ms.interaction",
        "napari_sam_ms.pipeline",
        "napari_sam_ms.weights.registry",
        "napari_sam_ms.training.finetune",
    }
    assert expected <= names
    assert not any(n.startswith("napari_sam_ms._qt") for n in names)


def test_backend_imports_leave_qt_out():
    modules = backend_modules()
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import napari_sam_ms as p; [getattr(p, n) for n in p.__all__]\n"
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
