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
pixels get ``<stem>_labels.zarr``), see :mod:`napari_sam_ms.cli_io`. Inputs may be folders,
globs or ``@list.txt``; many run on Dask (``--workers N``, ``--scheduler ADDRESS``), and a
manifest in the output folder lets a rerun skip what is done (:mod:`napari_sam_ms.batch`).
One input is segmented by :mod:`napari_sam_ms.segment_files`.

``finetune`` trains the mask decoder and prompt encoder (``--train-encoder``: the image encoder
too) of a model on images with instance label files, prints held-out validation figures as
it goes and writes a ``.ckpt`` that every widget and the pipeline load (choose it as
"Checkpoint"); see :mod:`napari_sam_ms.training.finetune` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# The names other modules and tests know the command by (defined in segment_files).
from .segment_files import (  # noqa: F401
    PROG,
    error,
    model_info,
    open_model,
    sidecar,
    warn,
    whole_image_params,
)


def _parser() -> argparse.ArgumentParser:
    from .batch.run import add_cli_options as add_batch_options
    from .segment_files import add_segment_options

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
        "--volume. Many inputs run on Dask workers (--workers, --scheduler); a manifest in "
        "--out lets a rerun skip the inputs already done.",
    )
    add_segment_options(seg)
    add_batch_options(seg)
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

    with one_line_messages(warn):
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


def segment(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run ``segment`` for parsed arguments (:func:`napari_sam_ms.batch.run.run_cli`);
    returns the exit status."""
    from .batch.run import run_cli

    return run_cli(args, argv)


if __name__ == "__main__":
    sys.exit(main())
