"""Shared fixtures: tiny reference models, their checkpoints, and our models loaded from them."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

# Keep the tests' caches and weights out of the user's folders.
_TMP = tempfile.mkdtemp(prefix="napari-sam-ms-tests-")
os.environ.setdefault("NAPARI_SAM_MS_CACHE", os.path.join(_TMP, "embeddings"))
os.environ.setdefault("NAPARI_SAM_MS_WEIGHTS", os.path.join(_TMP, "weights"))
# A fresh compile cache, as on a clean CI machine: local runs then take CI's time.
os.environ.setdefault("NAPARI_SAM_MS_COMPILE_CACHE", os.path.join(_TMP, "compile"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run slow tests (full vit_b parity)")


@pytest.fixture(scope="session", autouse=True)
def _mindspore_device():
    """Choose MindSpore's device before any test runs a kernel, as the package's entry points
    do: MindSpore refuses to choose it later, so a test file run alone would otherwise depend
    on which test configured it first."""
    from napari_sam_ms import runtime

    runtime.configure()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_reference():
    """Meta's torch SAM with the tiny config and random weights."""
    from reference import build_reference_sam

    from napari_sam_ms.build_sam import CONFIGS

    return build_reference_sam(CONFIGS["tiny"], seed=0)


@pytest.fixture(scope="session")
def tiny_pth(tiny_reference, tmp_path_factory) -> Path:
    """The tiny reference model saved as a real PyTorch checkpoint."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(tiny_reference.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The tiny model saved as a checkpoint file: every process that loads it (a Dask
    worker's too) gets the same weights."""
    from napari_sam_ms.build_sam import sam_model_registry
    from napari_sam_ms.weights.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("weights") / "sam_tiny.ckpt"
    return save_checkpoint(sam_model_registry["tiny"](), path)


@pytest.fixture
def use_settings():
    """Change the package's settings for one test: ``use_settings(sync=True)``."""
    from napari_sam_ms.settings import override

    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(override(**changes))


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def messages(monkeypatch):
    """The widgets' notifications, as (kind, text), instead of napari's pop-ups."""
    from napari_sam_ms._qt import common

    got: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(common, f"show_{kind}", lambda m, k=kind: got.append((k, m)))
    return got


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with random non-trivial weights everywhere (norms, rel-pos); fresh per
    test module, so a module may change its weights."""
    import mindspore as ms

    from napari_sam_ms import runtime
    from napari_sam_ms.build_sam import sam_model_registry

    runtime.configure()
    ms.set_seed(11)
    model = sam_model_registry["tiny"]()
    rng = np.random.default_rng(11)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    return model
