"""What a Dask worker runs: one input segmented and written by the worker itself.

A task receives the :class:`~napari_sam_ms.batch.worker.ModelSpec`, the command's options as a
plain dict, the command line (for the sidecar) and one input path, a few kilobytes in all. It
takes the model this process holds (:func:`~napari_sam_ms.batch.worker.worker_model`),
segments the input with the same :func:`~napari_sam_ms.segment_files.segment_one` as the
in-process loop, writes the label image and sidecar atomically, and returns a small
:func:`result` dict. No model and no pixels go through the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .worker import ModelSpec, load_count, worker_model

_LOCK = threading.Lock()
_RUNS: dict[tuple[ModelSpec, str, tuple[str, ...]], Any] = {}


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a task gets: the command's, with no progress bars and ``overwrite`` on.

    The driver checks each input's outputs before it submits it (``--overwrite``,
    ``--skip-existing``, two inputs with one name); a task may then replace what an
    earlier attempt of itself left (a worker killed between the label image and the
    sidecar), and nothing else.
    """
    options = {k: v for k, v in vars(args).items() if k not in ("images",)}
    options.update(overwrite=True, skip_existing=False, no_progress=True)
    return options


def worker_run(spec: ModelSpec, options: Mapping[str, Any], argv: Sequence[str]) -> Any:
    """The :class:`~napari_sam_ms.segment_files.SegmentRun` of these options in this process
    (made once, with the model of ``spec`` loaded once)."""
    from dataclasses import replace

    from ..segment_files import start
    from .manifest import fingerprint

    key = (spec, json.dumps(dict(options), sort_keys=True, default=str), tuple(argv))
    with _LOCK:
        run = _RUNS.get(key)
    if run is None:
        run = start(argparse.Namespace(**options), argv, loaded=worker_model(spec))
        run = replace(run, fingerprint=fingerprint(spec, options))  # the driver's
        with _LOCK:
            _RUNS[key] = run
    return run


def describe_task(spec: ModelSpec, options: Mapping[str, Any], argv: Sequence[str]) -> dict:
    """What the driver needs to write sidecars itself (a huge plane's): device, model
    description, whole-image parameters and the model's input side."""
    run = worker_run(spec, options, argv)
    return {
        "device": run.device,
        "model": run.model,
        "params": run.params,
        "model_input": run.model_input,
    }


def result(path: str, begin: float, spec: ModelSpec, **fields: Any) -> dict[str, Any]:
    """A task's small result: the input, the line to print or the error, the files
    written, and where and how it ran (worker pid, model loads in that process, seconds)."""
    doc = {"path": path, "line": None, "error": None, "files": []}
    doc.update(fields)
    doc.update(pid=os.getpid(), loads=load_count(spec),
               seconds=round(time.perf_counter() - begin, 3))  # fmt: skip
    return doc


def segment_task(
    spec: ModelSpec, options: Mapping[str, Any], argv: Sequence[str], path: str
) -> dict[str, Any]:
    """Segment the input at ``path`` on this worker and write its outputs (atomically).

    Returns:
        :func:`result`; a failure (unreadable input, full disk, model mismatch...) is
        returned as its one-line ``error``, not raised, so the batch goes on.
    """
    from ..segment_files import failure_text, segment_one

    begin = time.perf_counter()
    try:
        run = worker_run(spec, options, argv)
        written = segment_one(run, Path(path), set())
    except Exception as exc:
        return result(path, begin, spec, error=failure_text(Path(path), exc))
    return result(path, begin, spec, line=written.line, files=[str(f) for f in written.files])
