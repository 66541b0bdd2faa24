"""The inputs of a batch: ``INPUTS...`` expanded into one path per image.

One rule per kind of argument, in this order:

- ``@list.txt``: a text file of inputs, one a line (blank lines and lines starting with ``#``
  ignored; relative paths are relative to the list file's folder). Each line is expanded
  by the rules below, except ``@``.
- a glob pattern (it contains ``*``, ``?`` or ``[`` and is not an existing path): the
  matching files, sorted.
- a folder that is not a zarr store: the image files directly inside it (by suffix, sorted;
  zarr stores inside it count as images); sub-folders are not searched.
- anything else (a file, a zarr store, a path that does not exist): itself, as given; the
  reader reports a missing or unreadable file when its turn comes.

An argument that yields nothing (a pattern without match, a folder without images, an empty
list) becomes one failing item with the reason, so that the run reports it in its place.
If no argument yields an image, :class:`NothingToSegment` is raised.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

IMAGE_SUFFIXES = frozenset(
    {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".zarr"}
)
_MAGIC = "*?["


class NothingToSegment(ValueError):
    """No argument named an image."""


class Item(NamedTuple):
    """One input of a batch: a path, or an argument that found nothing and why."""

    path: Path
    problem: str | None = None


def expand_inputs(arguments: Sequence[str | Path]) -> list[Item]:
    """One :class:`Item` per image named by ``arguments`` (rules: module docstring).

    Raises:
        NothingToSegment: no argument yields an image.
        OSError: a list file cannot be read.
    """
    items: list[Item] = []
    for argument in arguments:
        text = str(argument)
        if text.startswith("@"):
            items.extend(_from_list(Path(text[1:])))
        else:
            items.extend(_expand(text, None))
    if not any(item.problem is None for item in items):
        said = "; ".join(f"{item.path}: {item.problem}" for item in items) or "no inputs"
        raise NothingToSegment(f"nothing to segment ({said})")
    return items


def _from_list(list_file: Path) -> list[Item]:
    """The inputs listed in a text file, each expanded."""
    lines = list_file.read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        return [Item(list_file, "the list file names no inputs")]
    items: list[Item] = []
    for entry in entries:
        items.extend(_expand(entry, list_file.parent))
    return items


def _expand(text: str, base: Path | None) -> list[Item]:
    """One argument (not a list file), relative to ``base`` (None: as given)."""
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists() and any(c in text for c in _MAGIC):
        found = sorted(Path(p) for p in glob.glob(str(path)))
        images = [p for p in found if p.is_file() or is_image(p)]
        return [Item(p) for p in images] or [Item(path, "no file matches this pattern")]
    if path.is_dir() and not _is_zarr(path):
        images = sorted(p for p in path.iterdir() if is_image(p))
        return [Item(p) for p in images] or [Item(path, "is a directory with no image files in it")]
    return [Item(path)]


def is_image(path: Path) -> bool:
    """A file or zarr store whose suffix names an image format this package reads."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return _is_zarr(path)
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _is_zarr(path: Path) -> bool:
    from ..cli_io import is_zarr_store

    return is_zarr_store(path)
