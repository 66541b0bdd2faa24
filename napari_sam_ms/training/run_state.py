"""A training run's resumable state: one file beside its checkpoint.

The state file (``<checkpoint stem>.state.ckpt``) holds everything a run needs to go on as
if it had never stopped: the model's parameters, AdamW's moments and step counter, the
random generator's state, the steps done, the history and validations so far, and the
settings the run was started with. It is written atomically (the same writer as the
checkpoints) before the model checkpoint, so a run stopped at any moment resumes from the
last state that was written whole. A resumed run must be asked for with the same settings:
anything else would silently train a different run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..weights.checkpoint import load_params, read_params, save_checkpoint

STATE_KEY = "napari_sam_ms_run_state"
STATE_SUFFIX = ".state.ckpt"
# Settings that may change between the parts of one run: where and how often it saves,
# and how often it validates, change nothing that is trained.
MAY_CHANGE = ("save_every", "val_every", "val_at_start")


def state_path(checkpoint: str | Path) -> Path:
    """Where the resumable state of the run writing ``checkpoint`` is kept."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + STATE_SUFFIX)


def save_state(
    path: Path,
    model: Any,
    optimizer: Any,
    rng: np.random.Generator,
    info: Mapping[str, Any],
) -> Path:
    """Write the run's state atomically; ``info`` holds the JSON-able rest (steps done,
    settings, history)."""
    params: dict[str, Any] = dict(model.parameters_dict())
    for name, value in optimizer.parameters_dict().items():
        params.setdefault(name, value)
    meta = {**info, "rng": rng.bit_generator.state}
    return save_checkpoint(params, path, config={STATE_KEY: json.dumps(meta)})


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(name -> Parameter, the run's info) from a state file, with a clear error if it is
    missing or not one."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no saved training state at {path}: start the run without resuming, or give "
            "the --out of the run to continue"
        )
    params, stored = read_params(path)
    if not stored or STATE_KEY not in stored:
        raise ValueError(f"{path} is not a training state file (no {STATE_KEY})")
    return params, json.loads(stored[STATE_KEY])


def check_same_run(
    stored: Mapping[str, Any], wanted: Mapping[str, Any], what: str, path: Path
) -> None:
    """Refuse to resume with settings other than the run's own (except :data:`MAY_CHANGE`)."""
    differ = [
        f"{k}={stored.get(k)!r} (asked {wanted.get(k)!r})"
        for k in sorted(set(stored) | set(wanted))
        if k not in MAY_CHANGE and _plain(stored.get(k)) != _plain(wanted.get(k))
    ]
    if differ:
        raise ValueError(
            f"{path} holds a run with other {what}: {', '.join(differ)}; resume it with its "
            "own settings, or start a new run with another output file"
        )


def restore(
    model: Any, optimizer: Any, rng: np.random.Generator, params: Mapping[str, Any],
    info: Mapping, source: str,
) -> None:  # fmt: skip
    """Put a read state back into the model, the optimizer and the generator; the model's
    and the optimizer's parameters must each be there one to one (:func:`load_params`)."""
    for cell in (model, optimizer):
        own = cell.parameters_dict()
        load_params(cell, {k: v for k, v in params.items() if k in own}, source)
    rng.bit_generator.state = info["rng"]


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples and lists compare equal)."""
    return json.loads(json.dumps(value))


__all__ = ["STATE_SUFFIX", "check_same_run", "read_state", "restore", "save_state", "state_path"]
