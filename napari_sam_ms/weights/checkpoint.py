"""Strict loading and atomic saving of SAM weights.

:func:`load_checkpoint` accepts our MindSpore ``.ckpt`` files and PyTorch ``.pth`` files
of Meta's SAM, MobileSAM and micro-sam (recognised by content, not suffix; layouts in
:mod:`.layouts`). A ``.pth`` is read in memory by the torch-free reader (:mod:`.pth_reader`);
nothing is written (convert it once with
``python -m napari_sam_ms.convert_weight`` to skip that parse next time).

Loading is strict: every checkpoint entry must be used and every model parameter filled
with the right shape, or one :class:`ValueError` names the missing, unexpected and
mis-shaped entries.

Our ``.ckpt`` files also store the model's size arguments (:mod:`.config`) as a JSON
string entry named :data:`CONFIG_KEY`, so ``build_sam_from_checkpoint`` can rebuild a model
of any size. They are written with MindSpore's CRC and checked on
load. Writing goes to a temporary file in the same folder that replaces the target only
once complete, so an interrupted save never leaves a file that passes as good.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np

from .layouts import read_sam_state_dict
from .shapes import detect_model_type

PathLike = str | os.PathLike

CONFIG_KEY = "sam_config"
MAX_LISTED = 8  # names shown per category in a mismatch error


# ---------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown}, ... and {more} more" if more > 0 else shown


def mismatch_message(
    found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]
) -> str | None:
    """Describe missing/unexpected/mis-shaped names in one line; None if all match."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [
        f"{k} {tuple(found[k])} vs {tuple(expected[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    parts = [
        f"{len(names)} {what} ({_listing(names)})"
        for what, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped, checkpoint vs model:", misshaped),
        )
        if names
    ]
    return "; ".join(parts) or None


def check_param_shapes(
    found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], source: str
) -> None:
    """Raise one ValueError naming every key/shape difference between two shape tables."""
    problem = mismatch_message(found, expected)
    if problem is None:
        return
    hint = _size_hint(found)
    raise ValueError(f"{source} does not fit the model: {problem}{hint}")


def _size_hint(found: Mapping[str, Sequence[int]]) -> str:
    """`` (the checkpoint looks like vit_l)`` when the shapes reveal a known size."""
    try:
        name, _ = detect_model_type(found)
    except ValueError:
        return ""
    return f" (the checkpoint looks like {name})" if name != "custom" else ""


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _file_kind(path: Path) -> str:
    """``torch`` for zip archives and legacy pickles, else ``mindspore``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no such checkpoint file: {path}; convert a .pth with "
            "'python -m napari_sam_ms.convert_weight --torch_path FILE' or pass checkpoint=None "
            "to fetch the official weights"
        )
    with open(path, "rb") as fh:
        head = fh.read(2)
    return "torch" if head == b"PK" or head[:1] == b"\x80" else "mindspore"


def _read_ms(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A MindSpore .ckpt as (name -> Parameter, stored config or None)."""
    try:
        raw = ms.load_checkpoint(str(path), crc_check=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(
            f"cannot read {path} as a MindSpore checkpoint ({exc}); if it was downloaded or "
            "converted, delete it and convert again"
        ) from None
    config = None
    if CONFIG_KEY in raw:
        config = _decode_config(raw.pop(CONFIG_KEY), path)
    return raw, config


def _decode_config(text: Any, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: the stored {CONFIG_KEY} is not valid JSON") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the stored {CONFIG_KEY} is not a dict")
    return _normalise_config(config)


def _normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-comparable config: lists become tuples."""
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in config.items()}


def read_params(path: PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(name -> array or Parameter, size arguments or None) from a .ckpt or .pth; for a
    ``.pth`` the sizes are detected from the shapes."""
    path = Path(path)
    if _file_kind(path) == "torch":
        state = read_sam_state_dict(path)
        try:
            config = detect_model_type({k: v.shape for k, v in state.items()})[1]
        except ValueError:
            config = None
        return state, config
    return _read_ms(path)


def read_checkpoint(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Read a .ckpt or .pth: (name -> numpy array, size arguments or None).

    For a ``.pth`` the size arguments are detected from the shapes.
    """
    params, config = read_params(path)
    return {k: _to_numpy(v) for k, v in params.items()}, config


def read_checkpoint_config(path: PathLike) -> dict[str, Any] | None:
    """The size arguments stored in (or, for a .pth, detected from) a file."""
    return read_params(path)[1]


def _to_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.asnumpy()


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in value.shape)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def _check_config(model: Any, config: Mapping[str, Any] | None, path: Path) -> None:
    """Raise if the stored sizes differ from the model's (some sizes change no shape)."""
    ours = getattr(model, "config", None)
    if not config or not ours:
        return
    ours = _normalise_config(ours)
    diff = [
        f"{k}={config[k]!r} vs {ours[k]!r}" for k in config if k in ours and config[k] != ours[k]
    ]
    if diff:
        raise ValueError(
            f"{path} was saved for another model size (checkpoint vs model: {', '.join(diff)}); "
            "build the model with the checkpoint's config (build_sam_from_checkpoint)"
        )


def _assign(params: Mapping[str, Any], model_params: Mapping[str, Any]) -> None:
    """Copy checkpoint values into the model's parameters (cast to their dtype)."""
    for name, param in model_params.items():
        value = params[name]
        if isinstance(value, np.ndarray):
            value = ms.Tensor(np.require(value, requirements="C"), dtype=param.dtype)
        elif value.dtype != param.dtype:
            value = value.astype(param.dtype)
        param.set_data(value)


def load_params(model: Any, params: Mapping[str, Any], source: str) -> None:
    """Copy ``params`` into ``model`` after checking that names and shapes match one to one
    (``source`` names them in the error)."""
    model_params = model.parameters_dict()
    check_param_shapes(
        {k: _shape(v) for k, v in params.items()},
        {k: _shape(p) for k, p in model_params.items()},
        source=source,
    )
    _assign(params, model_params)


def load_checkpoint(model: Any, path: PathLike) -> None:
    """Load a ``.ckpt`` (ours) or ``.pth`` (Meta's) into ``model``, strictly.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, sizes that differ from the model's, or entries that
            do not match its parameters one to one (all named in one message).
    """
    path = Path(path)
    params, config = read_params(path)
    if _file_kind(path) == "mindspore":
        _check_config(model, config, path)
    load_params(model, params, str(path))


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------


def _param_items(model_or_params: Any) -> Iterable[tuple[str, Any]]:
    if hasattr(model_or_params, "parameters_dict"):
        return model_or_params.parameters_dict().items()
    if isinstance(model_or_params, Mapping):
        return model_or_params.items()
    raise TypeError(f"expected a model or a dict of arrays, got {type(model_or_params).__name__}")


def _as_tensor(value: Any) -> ms.Tensor:
    if isinstance(value, np.ndarray):
        return ms.Tensor.from_numpy(np.require(value, requirements="C"))
    if isinstance(value, ms.Tensor):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} as a parameter")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        _fsync(folder)
    except OSError:  # not supported everywhere (e.g. Windows); the file itself is synced
        pass


def save_checkpoint(
    model_or_params: Any, path: PathLike, config: Mapping[str, Any] | None = None
) -> Path:
    """Write a MindSpore ``.ckpt`` atomically and return its path.

    Args:
        model_or_params: a Cell (its ``parameters_dict()``) or ``name -> array/Tensor``.
        path: target file; it must end in ``.ckpt`` (MindSpore appends it otherwise).
        config: size arguments to store; defaults to ``model.config``.
    """
    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"checkpoint names must end in .ckpt: {path}")
    if config is None:
        config = getattr(model_or_params, "config", None) or None
    items = [{"name": str(k), "data": _as_tensor(v)} for k, v in _param_items(model_or_params)]
    extra = {CONFIG_KEY: json.dumps(dict(config))} if config else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=".partial.ckpt", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        ms.save_checkpoint(items, str(tmp), append_dict=extra, crc_check=True)
        _fsync(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        # ours, and the ``.tmp`` MindSpore writes before renaming it to ours
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            leftover.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


__all__ = [
    "CONFIG_KEY",
    "check_param_shapes",
    "load_checkpoint",
    "load_params",
    "mismatch_message",
    "read_checkpoint",
    "read_checkpoint_config",
    "read_params",
    "save_checkpoint",
]
