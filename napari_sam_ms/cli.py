"""Command line: ``napari-sam-ms segment`` (headless whole-image mode), ``finetune`` and
``convert``.

::

    napari-sam-ms segment cells/*.tif --out labels/ --model vit_b --pred-iou-thresh 0.75
    napari-sam-ms finetune a.tif b.tif --labels a_labels.tif b_labels.tif --model vit_b \\
        --out my_sam.ckpt --steps 200
    napari-sam-ms convert --torch_path sam_vit_b_01ec64.pth

``segment`` writes, per input ``<stem>.<ext>``, a label image ``<stem>_labels.tif`` (uint16, or
uint32 past 65535 objects; background 0; ids 1..N by decreasing mask area; where masks overlap
the smaller one wins, see :func:`napari_sam_ms.utils.labels.masks_to_labels`) and a sidecar
``<stem>_labels.json`` with the model, checkpoint hash, parameters and, per label, the grid
point and scores that made it; a stack gets one label image, slice by slice
(:mod:`napari_sam_ms.utils.stacks`), or of 3D objects with ``--volume``
(:mod:`napari_sam_ms.cli_stacks`). Files are written atomically and never overwritten
without ``--overwrite``. A failing input gets a one-line error and the others are still
processed; the exit status is then 1. Warnings and log lines print as one line each.
A 2D TIFF or zarr plane larger than 1.5 times the model's input is segmented through tiles
at its own resolution and read lazily (``--tile``, ``--halo``, ``--zoom``; planes over 8192^2
pixels get ``<stem>_labels.zarr``), see :mod:`napari_sam_ms.cli_io`.

``finetune`` trains the mask decoder and prompt encoder (``--train-encoder``: the image encoder
too) of a model on images with instance label files, prints held-out validation figures as
it goes and writes a ``.ckpt`` that every widget and the pipeline load (choose it as
"Checkpoint"); see :mod:`napari_sam_ms.training.finetune` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .cli_stacks import Segmented
    from .loader import LoadedModel

PROG = "napari-sam-ms"


def _parser() -> argparse.ArgumentParser:
    from .amg_settings import add_cli_options
    from .cli_io import add_tile_options
    from .cli_stacks import add_volume_options
    from .utils.stacks import add_cli_options as add_stack_options
    from .weights import DEFAULT_EMBEDDED

    parser = argparse.ArgumentParser(
        prog=PROG, description="Segment Anything (SAM) on MindSpore, from the command line."
    )
    sub = parser.add_subparsers(dest="command", metavar="{segment,finetune,convert}")
    seg = sub.add_parser(
        "segment",
        help="segment whole images into label images",
        description="Segment every object in each image (SAM whole-image mode) and write "
        "<stem>_labels.tif (ids 1..N, largest first; smaller masks win where masks overlap) "
        "and <stem>_labels.json (model, parameters, per-label scores and prompt points). "
        "Stacks are segmented slice by slice (see 'stacks' below), or into 3D objects with "
        "--volume.",
    )
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="image files (TIFF, PNG, JPEG...)")
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
    sub.add_parser(
        "finetune",
        help="fine-tune a model on images with label files; writes a .ckpt",
        add_help=False,
    )
    sub.add_parser(
        "convert",
        help="convert a PyTorch SAM checkpoint (.pth) to MindSpore (.ckpt)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam-ms`` command; returns the exit status. Warnings and
    library log lines print as one line each; warnings meant for developers are dropped."""
    from .utils.quiet import one_line_messages

    with one_line_messages(_warn):
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "convert":
        from .convert_weight import main as convert_main

        return convert_main(argv[1:], prog=f"{PROG} convert")
    if argv and argv[0] == "finetune":
        from .training.finetune import main as finetune_main

        return finetune_main(argv[1:], prog=f"{PROG} finetune")
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return segment(args, argv)


# ----------------------------------------------------------------------- segment
def _error(message: object, kind: str = "error") -> None:
    """One line on stderr (through tqdm, so it does not break a progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {kind}: {' '.join(str(message).split())}", file=sys.stderr)


_warn = partial(_error, kind="warning")


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
        _warn(loaded.note)
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


def _outputs(image: Path, out_dir: Path) -> tuple[Path, Path]:
    return out_dir / f"{image.stem}_labels.tif", out_dir / f"{image.stem}_labels.json"


@dataclass(frozen=True)
class SegmentRun:
    """What every input of one ``segment`` run shares."""

    args: argparse.Namespace
    argv: tuple[str, ...]
    device: str
    model: dict[str, Any]  # the sidecar's model description (model_info)
    params: dict[str, Any]  # whole-image parameters
    generator: Any


def segment(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run ``segment`` for parsed arguments; returns the exit status."""
    from tqdm import tqdm

    from .cli_io import InputError

    problem = _segment_usage_problem(args)
    if problem is not None:
        _error(problem)
        return 2
    try:
        run = _start(args, argv)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        _error(exc)
        return 2
    failed = 0
    written: set[Path] = set()
    images = tqdm(args.images, desc="images", unit="image", disable=args.no_progress)
    for name in images:
        path = Path(name)
        try:
            images.write(_segment_one(run, path, written))
        except KeyboardInterrupt:
            raise
        except (InputError, OSError, ValueError) as exc:
            failed += 1
            _error(f"{path}: {exc}" if str(path) not in str(exc) else exc)
        except Exception as exc:  # keep going with the other images
            failed += 1
            _error(f"{path}: {type(exc).__name__}: {exc}")
    images.close()
    if failed and len(args.images) > 1:
        _error(f"{failed} of {len(args.images)} input(s) failed")
    return 1 if failed else 0


def _segment_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options before anything is loaded (None: nothing)."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return f"--out {out_dir}: exists and is not a folder"
    if args.overwrite and args.skip_existing:
        return "--overwrite and --skip-existing contradict each other"
    return None


def _start(args: argparse.Namespace, argv: Sequence[str]) -> SegmentRun:
    """Device, model, whole-image parameters and the generator of a run."""
    from . import runtime
    from .pipeline import make_generator

    device = runtime.configure(device=args.device)
    loaded = open_model(args)
    info = model_info(loaded)
    params = whole_image_params(args, info)
    generator = make_generator(loaded.model, **params)
    return SegmentRun(args, tuple(argv), device, info, params, generator)


def _segment_one(run: SegmentRun, path: Path, written: set[Path]) -> str:
    """Segment one input (every plane of a stack) and write its label image and sidecar.

    Returns:
        The line to print ("wrote ..." or "skipped ...").

    Raises:
        InputError: the outputs exist or were written for an earlier input of this run.
    """
    from .cli_io import check_outputs, choose_tiling, is_plane, labels_path_for, open_lazy
    from .cli_stacks import segment_planes, segment_volume_file
    from .utils.io import read_image, write_json, write_labels_tiff
    from .utils.stacks import plane_layout, stack_labels

    args = run.args
    labels_path, json_path = _outputs(path, Path(args.out))
    with open_lazy(path) as lazy:
        tiling = None
        if lazy is not None and is_plane(lazy.shape) and args.stack_mode != "volume":
            model_input = int(run.generator.predictor.model.image_encoder.img_size)
            tiling = choose_tiling(args, lazy.shape[:2], model_input)
        if tiling is not None and tiling.settings:
            labels_path = labels_path_for(Path(args.out), path.stem, lazy.shape)
            skip = check_outputs(args, path, labels_path, json_path, written)
            return skip or _segment_tiled(run, path, lazy, tiling, labels_path, json_path, written)
    skip = check_outputs(args, path, labels_path, json_path, written)
    if skip:
        return skip
    raw = read_image(path)
    if args.stack_mode == "volume":  # 3D objects (napari_sam_ms.cli_stacks)
        outputs = (labels_path, json_path)
        return segment_volume_file(run, path, raw, outputs, written, _with_polarity, sidecar)
    layout = plane_layout(raw.shape)
    run = _with_polarity(run, raw, path)
    planes = segment_planes(run, raw, path.name)
    labels, offsets = stack_labels([p.labels for p in planes], layout, args.ids)
    write_labels_tiff(labels_path, labels, overwrite=args.overwrite)
    doc = sidecar(run, path, raw, labels_path, labels, planes, offsets)
    write_json(json_path, doc, overwrite=args.overwrite)
    written.add(labels_path.resolve())
    n = doc["labels"]["count"]
    where = f" in {layout.count} slices" if layout.is_stack else ""
    return f"wrote {labels_path} ({n} label{'' if n == 1 else 's'}{where})"


def _with_polarity(run: SegmentRun, raw: np.ndarray, path: Path) -> SegmentRun:
    """Unless ``--(no-)invert`` is given, a dark-on-bright input is segmented inverted."""
    from .pipeline import make_generator
    from .utils.image import looks_dark_on_bright
    from .utils.stacks import rgb_planes

    if run.args.invert is not None or run.params.get("invert"):
        return run
    _, first = next(rgb_planes(raw))
    if not looks_dark_on_bright(first):
        return run
    _warn(f"{path.name} looks dark on bright: segmenting its inverted image (--no-invert: as is)")
    params = {**run.params, "invert": True}
    generator = make_generator(run.generator.predictor.model, **params)
    return replace(run, params=params, generator=generator)


def _segment_tiled(run: SegmentRun, path: Path, lazy: Any, tiling: Any, labels_path: Path,
                   json_path: Path, written: set[Path]) -> str:  # fmt: skip
    """Segment one 2D plane through tiles, reading it lazily; write labels and sidecar."""
    from types import SimpleNamespace

    from .cli_io import generate_with_bar, input_doc, write_labels
    from .cli_stacks import Segmented
    from .pipeline import make_generator
    from .utils.io import write_json
    from .utils.plane_source import PlaneSource

    args = run.args
    generator = make_generator(run.generator.predictor.model, **run.params, **tiling.settings)
    source = PlaneSource(lazy)
    start = time.perf_counter()
    records = generate_with_bar(generator, source, not args.no_progress, path.name)
    labels, rows = write_labels(labels_path, records, source.shape, args.overwrite)
    plane = Segmented(labels, rows, len(records), round(time.perf_counter() - start, 3))
    raw = SimpleNamespace(shape=tuple(lazy.shape), dtype=lazy.dtype)
    doc = sidecar(run, path, raw, labels_path, labels, [plane], [0],
                  input_doc(path, source, lazy.shape, lazy.dtype))  # fmt: skip
    doc["parameters"] = {**run.params, **tiling.settings}
    write_json(json_path, doc, overwrite=args.overwrite)
    written.add(labels_path.resolve())
    n = doc["labels"]["count"]
    return f"wrote {labels_path} ({n} label{'' if n == 1 else 's'}; {tiling.message})"


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


if __name__ == "__main__":
    sys.exit(main())
