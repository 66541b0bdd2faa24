"""``napari-sam-ms segment`` on large planes: tile options, lazy input, label output.

A 2D TIFF or zarr input is opened without reading its pixels (tifffile's ``aszarr`` for TIFF),
and tiles are chosen as the widget does: ``--tile auto`` (the default) tiles a plane larger
than 1.5 times the model's input (or any plane with ``--zoom`` above 1), ``--tile N`` or
``HxW`` always tiles, ``--tile off`` never does. A tiled plane is segmented region by region
(:class:`~napari_sam_ms.utils.plane_source.PlaneSource`); its label image is a TIFF, or a zarr
array written chunk by chunk when the plane has more than :data:`ZARR_PIXELS` pixels. Other
inputs (stacks, PNG, small planes) take the command's usual path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .amg_settings import help_text
from .amg_tiles import paint_labels
from .utils.io import TIFF_SUFFIXES, write_labels_tiff
from .utils.labels import ROW_KEYS
from .utils.tiling import ZOOMS, TileGrid, plane_tiling

ZARR_PIXELS = 8192 * 8192  # larger planes get a zarr label image (uint32: 268 MB and up)
ZARR_CHUNK = 1024


class InputError(Exception):
    """A problem with one input; reported on one line, the run goes on."""


def check_outputs(
    args: argparse.Namespace, path: Path, labels_path: Path, json_path: Path, written: set[Path]
) -> str | None:
    """ "skipped ..." when the outputs exist and --skip-existing is given, else None.

    Raises:
        InputError: the outputs exist or were written for an earlier input of this run.
    """
    if labels_path.resolve() in written:
        raise InputError(
            f"{labels_path} was written for an earlier input of this run (same file "
            "name); segment them into different --out folders"
        )
    existing = [p for p in (labels_path, json_path) if p.exists()]
    if existing and args.skip_existing:
        return f"skipped {path}: {existing[0]} exists"
    if existing and not args.overwrite:
        raise InputError(f"{existing[0]} exists (pass --overwrite to replace it)")
    return None


def add_tile_options(parser: argparse.ArgumentParser) -> None:
    """``--tile``, ``--halo`` and ``--zoom`` of the segment command."""
    group = parser.add_argument_group("tiles (large planes at their own resolution)")
    group.add_argument(
        "--tile",
        type=parse_tile,
        default="auto",
        metavar="auto|off|N|HxW",
        help="inner tile size in pixels. auto (default): tile planes larger than 1.5 times the "
        "model's input, with tiles of the model's input minus twice the halo; off: shrink "
        "every plane to the model's input (Meta's behaviour). " + help_text("tile_shape"),
    )
    group.add_argument(
        "--halo", type=int, default=None, metavar="N", help=help_text("halo")
    )  # fmt: skip
    group.add_argument(
        "--zoom", type=int, default=1, choices=ZOOMS, help=help_text("zoom")
    )  # fmt: skip


def parse_tile(value: str) -> str | tuple[int, int]:
    """``auto``, ``off``, ``N`` or ``HxW``."""
    text = value.strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        parts = [int(v) for v in text.split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected auto, off, N or HxW, got {value!r}")
    return (parts[0], parts[-1])


class Tiling(NamedTuple):
    """The tile settings chosen for one plane and the line that says so."""

    settings: dict[str, Any]  # tile_shape, halo, zoom for the generator ({}: no tiles)
    message: str


def choose_tiling(args: argparse.Namespace, shape: Sequence[int], model_input: int) -> Tiling:
    """Tiles for a plane of ``shape`` from ``--tile``/``--halo``/``--zoom``."""
    h, w = int(shape[0]), int(shape[1])
    if args.tile == "off":
        return Tiling({}, f"no tiles (--tile off): the {h}x{w} plane is shrunk to the model input")
    halo = None if args.halo is None else (args.halo, args.halo)
    settings = plane_tiling(args.tile, halo, int(args.zoom), (h, w), model_input)
    if not settings:
        return Tiling({}, f"no tiles: the {h}x{w} plane fits the model's {model_input} px input")
    tile, halo, zoom = settings["tile_shape"], settings["halo"], settings["zoom"]
    n = len(TileGrid((h, w), tile, halo))
    how = "--tile auto" if args.tile == "auto" else "--tile"
    return Tiling(
        settings,
        f"{n} tile{'s' if n != 1 else ''} of {tile[0]}x{tile[1]} px, halo {halo[0]}, zoom "
        f"{zoom} ({how}) over the {h}x{w} plane",
    )


def is_plane(shape: Sequence[int]) -> bool:
    """(H, W) or (H, W, 3|4): one 2D plane, possibly RGB(A)."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4))


@contextlib.contextmanager
def open_lazy(path: Path) -> Iterator[Any | None]:
    """The input as an array read on demand (zarr over a TIFF or a zarr store), or None
    for inputs read the usual way (PNG, JPEG...). Pyramids give their full-resolution level."""
    import zarr

    if is_zarr_store(path):
        node = zarr.open(str(path), mode="r")
        yield _level0(node)
        return
    if path.suffix.lower() not in TIFF_SUFFIXES:
        yield None
        return
    import tifffile

    from .utils.quiet import captured

    try:
        with captured():  # what tifffile logs about a damaged file: the usual reader says it
            tif = tifffile.TiffFile(path)
            store = tif.series[0].aszarr(level=0)
    except Exception:  # missing or damaged: the usual reader says why, on one line
        yield None
        return
    try:
        yield zarr.open(store, mode="r")
    finally:
        tif.close()


def is_zarr_store(path: Path) -> bool:
    """A folder that is a zarr store (``.zarr``, or zarr's own metadata files inside)."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))
    )


def _level0(node: Any) -> Any:
    """An array, or the first array of a (multiscale) group."""
    if hasattr(node, "shape"):
        return node
    for key in ("0", "s0", "scale0"):
        if key in node:
            return node[key]
    arrays = list(node.array_values()) if hasattr(node, "array_values") else []
    if not arrays:
        raise ValueError("the zarr store holds no array")
    return arrays[0]


def labels_path_for(out_dir: Path, stem: str, shape: Sequence[int]) -> Path:
    """``<stem>_labels.zarr`` for planes over :data:`ZARR_PIXELS`, else ``.tif``."""
    big = int(shape[0]) * int(shape[1]) > ZARR_PIXELS
    return out_dir / f"{stem}_labels.{'zarr' if big else 'tif'}"


def write_labels(
    path: Path, records: Sequence[dict[str, Any]], shape: Sequence[int], overwrite: bool
) -> tuple[Any, list[dict[str, Any]]]:
    """Paint the records into a TIFF or zarr label image at ``path``, atomically.

    Returns:
        (labels, rows): the label array (numpy, or the written zarr array) and one sidecar
        row per label (id, visible pixels and the record's scores, as ``label_rows``).
    """
    shape = (int(shape[0]), int(shape[1]))
    if path.suffix == ".zarr":
        labels, index, visible = _write_zarr(path, records, shape, overwrite)
    else:
        labels, index, visible = paint_labels(records, shape)
        write_labels_tiff(path, labels, overwrite=overwrite)
    rows = []
    for k, (i, seen) in enumerate(zip(index, visible, strict=True), start=1):
        row: dict[str, Any] = {"label": k, "visible_area": int(seen)}
        row.update({key: records[int(i)][key] for key in ROW_KEYS if key in records[int(i)]})
        rows.append(row)
    return labels, rows


def _write_zarr(path: Path, records, shape, overwrite: bool):
    """A zarr label image written into a temporary folder beside ``path``, then moved in."""
    import zarr

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:

        def create(dtype: np.dtype) -> Any:
            chunks = (min(ZARR_CHUNK, shape[0]), min(ZARR_CHUNK, shape[1]))
            return zarr.open_array(
                str(tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
            )

        labels, index, visible = paint_labels(records, shape, out=create, chunk=ZARR_CHUNK)
        old = None
        if path.exists():  # replace: move the old one aside first, drop it after
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return zarr.open_array(str(path), mode="r"), index, visible


def generate_with_bar(generator: Any, image: Any, show: bool, name: str) -> list[dict[str, Any]]:
    """Run the generator with a progress bar over its batches of points (all tiles)."""
    import inspect

    from tqdm import tqdm

    if not show or "progress" not in inspect.signature(generator.generate).parameters:
        return generator.generate(image)
    with tqdm(desc=name, unit="batch", leave=False) as bar:

        def progress(done: int, total: int | None = None, *_: Any) -> None:
            if total is not None and bar.total != total:
                bar.total = total
                bar.refresh()
            bar.n = done
            bar.refresh()

        return generator.generate(image, progress=progress)


def input_doc(path: Path, source: Any, raw_shape: Sequence[int], raw_dtype: Any) -> dict:
    """The sidecar's ``input`` entry of a plane read lazily (value range from the sample the
    contrast limits come from, not every pixel)."""
    from .weights import sha256_of

    limits = source.contrast_limits
    return {
        "path": str(path.resolve()),
        "sha256": sha256_of(path) if path.is_file() else None,
        "shape": [int(v) for v in raw_shape],
        "dtype": str(np.dtype(raw_dtype)),
        "value_range": list(limits) if limits is not None else None,
        "conversion": "to_rgb_uint8 tile by tile with one set of contrast limits for the whole "
        "plane: uint8 as is, other types scaled from value_range (the min..max of the whole "
        "plane when it has at most 4 M pixels, else of a sample of it) to 0..255",
    }


__all__ = [
    "InputError",
    "check_outputs",
    "Tiling",
    "ZARR_PIXELS",
    "add_tile_options",
    "choose_tiling",
    "generate_with_bar",
    "input_doc",
    "is_plane",
    "is_zarr_store",
    "labels_path_for",
    "open_lazy",
    "parse_tile",
    "write_labels",
]
