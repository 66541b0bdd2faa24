"""One input of ``napari-sam-ms segment``: its options, model, label image and sidecar.

The command's in-process loop and a batch task on a Dask worker
(:mod:`napari_sam_ms.batch.tasks`) call the same :func:`segment_one` for each input, with a
:class:`SegmentRun` made by :func:`start` (the options, the model and its whole-image
parameters). A tiled plane's records can come from elsewhere (a cluster's tile tasks):
:func:`write_tiled` writes them as the in-process tiled path does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .cli_io import Tiling
    from .cli_stacks import Segmented
    from .loader import LoadedModel

PROG = "napari-sam-ms"


def error(message: object, kind: str = "error") -> None:
    """One line on stderr (through tqdm, so it does not break a progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {kind}: {' '.join(str(message).split())}", file=sys.stderr)


warn = partial(error, kind="warning")


def failure_text(path: Path, exc: BaseException) -> str:
    """The one-line report of an input that failed (the path once, the reason)."""
    from .cli_io import InputError

    if isinstance(exc, (InputError, OSError, ValueError)):
        return f"{path}: {exc}" if str(path) not in str(exc) else str(exc)
    return f"{path}: {type(exc).__name__}: {exc}"


def add_segment_options(seg: argparse.ArgumentParser) -> None:
    """The ``segment`` command's inputs, output folder, model and whole-image options."""
    from .amg_settings import add_cli_options
    from .cli_io import add_tile_options
    from .cli_stacks import add_volume_options
    from .utils.stacks import add_cli_options as add_stack_options
    from .weights import DEFAULT_EMBEDDED

    seg.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image files (TIFF, PNG, JPEG...), folders (their image files), glob patterns "
        "('cells/*.tif', quoted) or @list.txt (a text file of paths, one a line)",
    )
    seg.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    seg.add_argument(
        "--model",
        default=None,
        help="micro (the embedded default model), vit_b, vit_l, vit_h (or sam_vit_b ...); "
        "default: the size stored in --checkpoint, else vit_b when its official weights are "
        "on this machine, else micro. 'tiny' without a checkpoint is a random-weight model "
        "for tests",
    )
    seg.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help=".ckpt (or Meta .pth) weights; default: the official weights of --model, "
        "downloaded once or found in the weights folder",
    )
    # Whole-image options from the settings table; the Python spelling (--points_per_side,
    # as in the model card) is accepted too, unlisted.
    group = seg.add_argument_group("whole-image parameters (Meta's SamAutomaticMaskGenerator)")
    add_cli_options(group, hidden=seg, model_type=DEFAULT_EMBEDDED)
    add_stack_options(seg)
    add_volume_options(seg)
    add_tile_options(seg)
    seg.add_argument("--device", default=None, help="CPU, GPU or Ascend (default: CPU)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose outputs exist (resume a run) instead of reporting an error",
    )
    seg.add_argument("--no-progress", action="store_true", help="no progress bars")


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options before anything is loaded (None: nothing)."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return f"--out {out_dir}: exists and is not a folder"
    if args.overwrite and args.skip_existing:
        return "--overwrite and --skip-existing contradict each other"
    return None


def whole_image_params(args: argparse.Namespace, model_info: dict[str, Any]) -> dict[str, Any]:
    """Whole-image parameters: as given, else the model's own defaults (the embedded model
    loaded from the registry), else Meta's."""
    from .amg_settings import from_cli

    return from_cli(args, model_info.get("whole_image_defaults", {}))


def open_model(args: argparse.Namespace) -> LoadedModel:
    """The model of ``--model``/``--checkpoint`` (:func:`napari_sam_ms.loader.load_model`);
    warns on stderr about random weights."""
    from .loader import load_model

    loaded = load_model(args.model, args.checkpoint)
    if loaded.note:
        warn(loaded.note)
    return loaded


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """The sidecar's description of a loaded model (type, weights, defaults, sizes)."""
    from .weights import DEFAULT_EMBEDDED

    return {
        "type": loaded.model_type,
        "checkpoint": None if loaded.checkpoint is None else str(loaded.checkpoint),
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "random_weights": loaded.random_weights,
        "official_weights": loaded.registered and loaded.model_type != DEFAULT_EMBEDDED,
        "mirror_average": loaded.mirror_average,
        "whole_image_defaults": dict(loaded.whole_image_defaults),
        "config": dict(getattr(loaded.model, "config", None) or {}),
    }


def outputs_for(image: Path, out_dir: Path) -> tuple[Path, Path]:
    """``<stem>_labels.tif`` and ``<stem>_labels.json`` in ``out_dir``."""
    return out_dir / f"{image.stem}_labels.tif", out_dir / f"{image.stem}_labels.json"


@dataclass(frozen=True)
class SegmentRun:
    """What every input of one ``segment`` run shares."""

    args: argparse.Namespace
    argv: tuple[str, ...]
    device: str
    model: dict[str, Any]  # the sidecar's model description (model_info)
    params: dict[str, Any]  # whole-image parameters
    generator: Any  # None on a batch client, which only writes what workers found
    model_input: int = 1024  # the image encoder's input side (tiles are chosen from it)
    fingerprint: str = ""  # a batch run's (batch.manifest.fingerprint), kept in each sidecar


class Written(NamedTuple):
    """What :func:`segment_one` did: the line to print and the files it wrote (none when
    it skipped the input)."""

    line: str
    files: tuple[Path, ...]


def start(
    args: argparse.Namespace, argv: Sequence[str], loaded: LoadedModel | None = None
) -> SegmentRun:
    """Device, model, whole-image parameters and the generator of a run; ``loaded``: a model
    this process already holds (a batch worker's), else the one the options choose."""
    from . import runtime
    from .pipeline import make_generator

    device = runtime.configure(device=args.device)
    loaded = open_model(args) if loaded is None else loaded
    info = model_info(loaded)
    params = whole_image_params(args, info)
    generator = make_generator(loaded.model, **params)
    side = int(loaded.model.image_encoder.img_size)
    return SegmentRun(args, tuple(argv), device, info, params, generator, side)


def tiling_for(run: SegmentRun, lazy: Any) -> Tiling | None:
    """The tiles of an input read lazily (a 2D plane larger than 1.5 times the model's
    input, or as ``--tile`` says), or None: it takes the usual path."""
    from .cli_io import choose_tiling, is_plane

    if lazy is None or not is_plane(lazy.shape) or run.args.stack_mode == "volume":
        return None
    tiling = choose_tiling(run.args, lazy.shape[:2], run.model_input)
    return tiling if tiling.settings else None


def segment_one(run: SegmentRun, path: Path, written: set[Path]) -> Written:
    """Segment one input (every plane of a stack) and write its label image and sidecar.

    Returns:
        The line to print ("wrote ..." or "skipped ...") and the files written.

    Raises:
        InputError: the outputs exist or were written for an earlier input of this run.
    """
    from .cli_io import check_outputs, labels_path_for, open_lazy
    from .cli_stacks import segment_planes, segment_volume_file
    from .utils.io import read_image, write_json, write_labels_tiff
    from .utils.plane_source import PlaneSource
    from .utils.stacks import plane_layout, stack_labels

    args = run.args
    labels_path, json_path = outputs_for(path, Path(args.out))
    with open_lazy(path) as lazy:
        tiling = tiling_for(run, lazy)
        if tiling is not None:
            labels_path = labels_path_for(Path(args.out), path.stem, lazy.shape)
            skip = check_outputs(args, path, labels_path, json_path, written)
            if skip:
                return Written(skip, ())
            source = PlaneSource(lazy)
            records, seconds = _generate_tiled(run, path, source, tiling)
            outputs = (labels_path, json_path)
            return write_tiled(run, path, lazy, tiling, (records, seconds), outputs, written,
                               source)  # fmt: skip
    skip = check_outputs(args, path, labels_path, json_path, written)
    if skip:
        return Written(skip, ())
    raw = read_image(path)
    if args.stack_mode == "volume":  # 3D objects (napari_sam_ms.cli_stacks)
        outputs = (labels_path, json_path)
        with together(labels_path):
            line = segment_volume_file(run, path, raw, outputs, written, with_polarity, sidecar)
        return Written(line, outputs)
    layout = plane_layout(raw.shape)
    run = with_polarity(run, raw, path)
    planes, tiling = segment_planes(run, raw, path.name)
    labels, offsets = stack_labels([p.labels for p in planes], layout, args.ids)
    with together(labels_path):
        write_labels_tiff(labels_path, labels, overwrite=args.overwrite)
        doc = sidecar(run, path, raw, labels_path, labels, planes, offsets)
        doc["parameters"] = {**run.params, **tiling.settings}
        write_json(json_path, doc, overwrite=args.overwrite)
    written.add(labels_path.resolve())
    n = doc["labels"]["count"]
    where = f" in {layout.count} slices" if layout.is_stack else ""
    tiles = f"; {tiling.message}" if tiling.settings else ""
    line = f"wrote {labels_path} ({n} label{'' if n == 1 else 's'}{where}{tiles})"
    return Written(line, (labels_path, json_path))


@contextlib.contextmanager
def together(labels_path: Path) -> Iterator[None]:
    """A label image and its sidecar are written together or not at all: when the block
    fails (a full disk while writing the sidecar...), a label image it wrote is removed."""

    def state() -> tuple[int, int] | None:
        try:
            st = labels_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    before = state()
    try:
        yield
    except BaseException:
        if state() != before:  # written by the block: not left without its sidecar
            if labels_path.is_dir():
                shutil.rmtree(labels_path, ignore_errors=True)
            else:
                labels_path.unlink(missing_ok=True)
        raise


def with_polarity(run: SegmentRun, raw: np.ndarray, path: Path) -> SegmentRun:
    """Unless ``--(no-)invert`` is given, a dark-on-bright input is segmented inverted."""
    from .pipeline import make_generator
    from .utils.image import looks_dark_on_bright
    from .utils.stacks import rgb_planes

    if run.args.invert is not None or run.params.get("invert"):
        return run
    _, first = next(rgb_planes(raw))
    if not looks_dark_on_bright(first):
        return run
    warn(f"{path.name} looks dark on bright: segmenting its inverted image (--no-invert: as is)")
    params = {**run.params, "invert": True}
    generator = make_generator(run.generator.predictor.model, **params)
    return replace(run, params=params, generator=generator)


def _generate_tiled(
    run: SegmentRun, path: Path, source: Any, tiling: Tiling
) -> tuple[list[dict[str, Any]], float]:
    """The records of one 2D plane segmented through tiles in this process, and seconds."""
    from .cli_io import generate_with_bar
    from .cli_stacks import tiled_generator

    generator = tiled_generator(run, tiling)
    begin = time.perf_counter()
    show = not run.args.no_progress
    records = generate_with_bar(generator, source, show, path.name)
    return records, time.perf_counter() - begin


def write_tiled(
    run: SegmentRun,
    path: Path,
    lazy: Any,
    tiling: Tiling,
    found: tuple[Sequence[dict[str, Any]], float],
    outputs: tuple[Path, Path],
    written: set[Path],
    source: Any = None,
) -> Written:
    """Write a tiled plane's records (found here or by a cluster's tile tasks) as its label
    image (TIFF, or zarr for a huge plane) and sidecar.

    Args:
        found: (records, seconds) of the plane.
        source: the plane's PlaneSource if one is open (its contrast limits), else made here.
    """
    from types import SimpleNamespace

    from .cli_io import input_doc, write_labels
    from .cli_stacks import Segmented
    from .utils.io import write_json
    from .utils.plane_source import PlaneSource

    records, seconds = found
    labels_path, json_path = outputs
    source = PlaneSource(lazy) if source is None else source
    overwrite = run.args.overwrite
    with together(labels_path):
        labels, rows = write_labels(labels_path, records, source.shape, overwrite)
        plane = Segmented(labels, rows, len(records), round(seconds, 3))
        raw = SimpleNamespace(shape=tuple(lazy.shape), dtype=lazy.dtype)
        doc = sidecar(run, path, raw, labels_path, labels, [plane], [0],
                      input_doc(path, source, lazy.shape, lazy.dtype))  # fmt: skip
        doc["parameters"] = {**run.params, **tiling.settings}
        write_json(json_path, doc, overwrite=overwrite)
    written.add(labels_path.resolve())
    n = doc["labels"]["count"]
    line = f"wrote {labels_path} ({n} label{'' if n == 1 else 's'}; {tiling.message})"
    return Written(line, (labels_path, json_path))


def sidecar(
    run: SegmentRun,
    path: Path,
    raw: np.ndarray,
    labels_path: Path,
    labels: np.ndarray,
    planes: Sequence[Segmented],
    offsets: Sequence[int],
    input_entry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``<stem>_labels.json`` of one input (JSON-ready): versions, input, model,
    parameters, labels, and the ``objects`` of a 2D image or the ``slices`` of a stack.

    ``planes`` are each 2D plane's results, ``offsets`` what was added to their ids in
    ``labels`` (:func:`napari_sam_ms.utils.stacks.stack_labels`); ``input_entry`` replaces
    the ``input`` read from ``raw`` (a plane read lazily).
    """
    import mindspore

    from . import __version__
    from .utils.stacks import plane_layout, slice_entries, stack_description
    from .weights import sha256_of

    layout = plane_layout(raw.shape)
    if input_entry is None:
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        scale = "the stack's" if layout.is_stack else "the image's"
        input_entry = {
            "path": str(path.resolve()),
            "sha256": sha256_of(path),
            "shape": list(raw.shape),
            "dtype": str(raw.dtype),
            "value_range": [finite.min(), finite.max()] if finite.size else None,
            "conversion": f"to_rgb_uint8: uint8 as is, other types scaled from {scale} "
            "min..max to 0..255 (NaN as the minimum), gray repeated to RGB, alpha dropped",
        }
    doc = {
        "napari_sam_ms_version": __version__,
        "mindspore_version": mindspore.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": [PROG, *run.argv],
        "input": input_entry,
        "model": run.model,
        "device": run.device,
        "parameters": run.params,
        "labels": {
            "file": labels_path.name,
            "dtype": str(labels.dtype),
            "count": sum(len(p.objects) for p in planes),
            "masks_found": sum(p.masks_found for p in planes),
            "order": "ids 1..N by decreasing mask area; where masks overlap the "
            "smaller mask wins; masks left with no pixels get no id",
        },
        "seconds": round(sum(p.seconds for p in planes), 3),
    }
    if run.fingerprint:  # which batch settings wrote it (a rerun may adopt it, see manifest)
        doc["batch_fingerprint"] = run.fingerprint
    if not layout.is_stack:
        doc["objects"] = planes[0].objects
        return doc
    doc["labels"].update(stack_description(layout, run.args.stack_mode, run.args.ids))
    columns = {
        "masks_found": [p.masks_found for p in planes],
        "seconds": [p.seconds for p in planes],
    }
    doc["slices"] = slice_entries(layout, [p.objects for p in planes], offsets, **columns)
    return doc
