"""Read images from files and write results atomically (numpy, tifffile and Pillow only).

The libraries' own warnings and log lines never print: they become the reader's error, or an
:class:`ImageWarning` of one line naming the file (:mod:`napari_sam_ms.utils.quiet`).

Reading keeps the file's pixel grid exactly as stored (no EXIF rotation, no resampling), so
labels written for a file overlay that file's pixels the way napari shows them. Conversion to
SAM's 8-bit RGB happens afterwards in :func:`napari_sam_ms.utils.image.to_rgb_uint8`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .quiet import Captured, captured, one_line

PathLike = str | os.PathLike

TIFF_SUFFIXES = (".tif", ".tiff")


class ImageWarning(UserWarning):
    """A reader's or writer's complaint about a file it could still handle, on one line
    naming the file (the library's own warnings and log lines are not shown)."""


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file into a numpy array with its own dtype and channels.

    ``.tif``/``.tiff`` files are read with tifffile (first series; 16-bit and float data kept),
    everything else with Pillow (first frame; palette and CMYK images become RGB, 16-bit
    grayscale stays 16-bit, RGBA keeps its alpha for :func:`to_rgb_uint8` to drop).
    What the readers warn or log is not printed: it becomes part of the error, or one
    :class:`ImageWarning` per message when the file could still be read.

    Raises:
        FileNotFoundError: the path does not exist or is a directory.
        ValueError: the file is not an image these readers understand.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a directory, not an image file")
    with captured() as said:
        if path.suffix.lower() in TIFF_SUFFIXES:
            data = _read_tiff(path, said)
        else:
            data = _read_other(path, said)
    for line in said.lines():
        warnings.warn(ImageWarning(f"{path}: {line}"), stacklevel=2)
    return data


def _reason(exc: BaseException | None, said: Captured, fallback: str) -> str:
    """Why reading failed, on one line: the exception, else what the reader logged."""
    text = one_line(exc) if exc is not None else ""
    first = said.first()
    if first and first not in text:
        text = f"{text}; {first}" if text else first
    return text or fallback


def _read_tiff(path: Path, said: Captured) -> np.ndarray:
    import tifffile

    try:
        data = np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ValueError(f"{path}: cannot read TIFF ({_reason(exc, said, '')})") from exc
    if data.size == 0:  # tifffile logs and returns nothing for some damaged files
        reason = _reason(None, said, "no image data found")
        raise ValueError(f"{path}: cannot read TIFF ({reason})")
    return data


def _read_other(path: Path, said: Captured) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.seek(0)
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            return np.asarray(img).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable image ({_reason(exc, said, '')})") from exc


def _atomic_write(path: PathLike, write: Callable[[str], None], overwrite: bool) -> Path:
    """Write through a temporary file in the same folder, then move it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_labels_tiff(path: PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a label image (2D, or a stack of them) as a zlib-compressed TIFF, atomically.

    A stack's shape is stored in tifffile's description tag, so (T, Z, Y, X) reads back as
    such, not as T*Z pages. What tifffile warns or logs becomes one :class:`ImageWarning`
    per message.
    """
    import tifffile

    metadata = {} if labels.ndim > 2 else None  # {}: tifffile's shape description

    def write(tmp: str) -> None:
        tifffile.imwrite(tmp, labels, compression="zlib", metadata=metadata)

    with captured() as said:
        written = _atomic_write(path, write, overwrite)
    for line in said.lines():
        warnings.warn(ImageWarning(f"{path}: {line}"), stacklevel=2)
    return written


def write_json(path: PathLike, data: Any, overwrite: bool = False) -> Path:
    """Write JSON (numpy scalars and arrays converted), atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=_to_json)
            fh.write("\n")

    return _atomic_write(path, write, overwrite)


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


__all__ = ["ImageWarning", "read_image", "write_json", "write_labels_tiff"]
