"""``napari-sam-ms segment`` on stacks: every plane on its own, or one 3D label image.

``--per-slice`` (the default) segments every 2D plane of a stack on its own
(:func:`segment_planes`). ``--volume`` segments the slices of a 3D stack and merges their
objects into 3D objects (:func:`napari_sam_ms.segment_volume.segment_volume`), written as one
label image with ids 1..N by decreasing volume; ``--scale Z Y X`` (the voxel spacing) makes
``--min-size`` a physical volume. A 2D image or a 4D stack is refused with one line saying
what to do.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .cli_io import InputError, choose_tiling, generate_with_bar
from .utils.io import write_json, write_labels_tiff
from .utils.labels import label_rows
from .utils.paint import paint_labels
from .utils.stacks import plane_layout, rgb_planes
from .volumes.match3d import AUTOMATIC


class Segmented(NamedTuple):
    """One 2D plane's result: its label image (ids 1..N) and the sidecar rows of its labels."""

    labels: np.ndarray
    objects: list[dict[str, Any]]
    masks_found: int  # masks the generator returned (some may end with no pixels)
    seconds: float


def segment_planes(run: Any, raw: np.ndarray, name: str) -> tuple[list[Segmented], Any]:
    """Segment every 2D plane of an input (the one plane of a 2D image), in C order, with a
    progress bar over a stack's slices; planes larger than the model's input go through
    tiles as ``--tile`` says. Returns the planes' results and the tiling chosen."""
    from tqdm import tqdm

    layout = plane_layout(raw.shape)
    tiling = choose_tiling(run.args, layout.plane, run.model_input)
    generator = tiled_generator(run, tiling)
    show = not run.args.no_progress
    results = []
    quiet = not show or not layout.is_stack
    with tqdm(total=layout.count, desc=f"{name} slices", unit="slice", disable=quiet) as bar:
        for index, rgb in rgb_planes(raw):
            start = time.perf_counter()
            records = generate_with_bar(
                generator, rgb, show, f"{name} {list(index)}" if index else name
            )
            # (tiled records of large planes hold masks cropped to their boxes)
            labels, order, _ = paint_labels(records, rgb.shape[:2])
            rows = label_rows(records, labels, order)
            seconds = round(time.perf_counter() - start, 3)
            results.append(Segmented(labels, rows, len(records), seconds))
            bar.update()
    return results, tiling


def tiled_generator(run: Any, tiling: Any) -> Any:
    """The run's whole-image generator, or one with the same model and settings and
    ``tiling``'s tiles (:func:`~napari_sam_ms.cli_io.choose_tiling`)."""
    if not tiling.settings:
        return run.generator
    from .pipeline import make_generator

    return make_generator(run.generator.predictor.model, **run.params, **tiling.settings)


def add_volume_options(parser: argparse.ArgumentParser) -> None:
    """``--volume`` and its matching options (a group of their own)."""
    group = parser.add_argument_group(
        "volumes (--volume)",
        "Segment the slices of a 3D stack (Z, Y, X) and link each slice's objects to those "
        "of the next by overlap (IoU, linear assignment): one label image of 3D objects, "
        "ids 1..N by decreasing volume.",
    )
    group.add_argument(
        "--volume",
        dest="stack_mode",
        action="store_const",
        const="volume",
        default=argparse.SUPPRESS,
        help="write 3D objects (one id through the slices) instead of per-slice ids",
    )
    group.add_argument(
        "--min-iou",
        type=float,
        default=AUTOMATIC["min_iou"],
        metavar="F",
        help="least IoU that links objects of neighbouring slices (default %(default)s)",
    )
    group.add_argument(
        "--min-size",
        type=float,
        default=0,
        metavar="V",
        help="least volume of a 3D object: voxels, or with --scale in its units (voxels times "
        "Z*Y*X, e.g. um^3) (default 0)",
    )
    group.add_argument(
        "--min-slices",
        type=int,
        default=AUTOMATIC["min_slices"],
        metavar="N",
        help="least number of slices a 3D object spans; lower it for stacks with few slices "
        "per object (default %(default)s)",
    )
    group.add_argument(
        "--max-gap",
        type=int,
        default=AUTOMATIC["max_gap"],
        metavar="N",
        help="link objects across up to N slices where they are missing (default %(default)s)",
    )
    group.add_argument(
        "--scale",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="voxel spacing (e.g. 2 0.5 0.5 in um): --min-size is then a physical volume",
    )


def segment_volume_file(
    run: Any,
    path: Path,
    raw: np.ndarray,
    outputs: tuple[Path, Path],
    written: set[Path],
    polarity: Callable[[Any, np.ndarray, Path], Any],
    sidecar: Callable[..., dict[str, Any]],
) -> str:
    """Segment one 3D stack into 3D objects; write its label image and sidecar.

    Args:
        run: the command's run (arguments, generator, model description).
        path, raw: the input and its pixels.
        outputs: (label image, sidecar) paths.
        written: label images written so far by this run (this one is added).
        polarity: ``polarity(run, raw, path)``: the run with an inverted generator for a
            dark-on-bright input (the command's rule).
        sidecar: the command's sidecar builder (its fields for a stack; the volume's added).

    Returns:
        The line to print.

    Raises:
        InputError: not a 3D stack.
    """
    from tqdm import tqdm

    from .segment_volume import segment_volume

    args = run.args
    layout = plane_layout(raw.shape)
    if not layout.is_stack:
        raise InputError(
            f"--volume needs a 3D stack (Z, Y, X), got a 2D image of shape {raw.shape}: "
            "leave out --volume to segment it"
        )
    if len(layout.lead) > 1:
        raise InputError(
            f"--volume takes one 3D stack (Z, Y, X), got shape {raw.shape}: save each 3D "
            "stack (e.g. each time point) to its own file, or leave out --volume"
        )
    run = polarity(run, raw, path)
    n = layout.count
    tiling = choose_tiling(args, layout.plane, run.model_input)
    generator = tiled_generator(run, tiling)  # large slices at their own resolution
    with tqdm(total=n, desc=f"{path.name} slices", unit="slice", disable=args.no_progress) as bar:
        result = segment_volume(
            raw,
            generator=generator,
            scale=args.scale,
            min_iou=args.min_iou,
            min_size=args.min_size,
            min_slices=args.min_slices,
            max_gap=args.max_gap,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    labels_path, json_path = outputs
    write_labels_tiff(labels_path, result.labels, overwrite=args.overwrite)
    planes = [
        Segmented(result.per_slice[z], [], result.masks_found[z], result.seconds[z])
        for z in range(n)
    ]
    doc = sidecar(run, path, raw, labels_path, result.labels, planes, [0] * n)
    doc["labels"].update(
        count=result.count,
        order="3D objects 1..N by decreasing volume: each slice's masks as a 2D label image "
        "(smaller masks win), linked to the next slice's by IoU with linear assignment",
        ids="volume",
    )
    doc["labels"].pop("order_in_stack", None)
    for entry in doc["slices"]:  # per slice: what the generator found, no per-slice ids
        entry.pop("objects")
        entry["count"] = int(len(np.unique(result.per_slice[entry["index"][0]])) - 1)
    doc["parameters"] = {**run.params, **tiling.settings}
    doc["volume"] = {
        "tiles": tiling.message,
        "min_iou": args.min_iou,
        "min_size": args.min_size,
        "min_slices": args.min_slices,
        "max_gap": args.max_gap,
        "scale": args.scale,
        "links": len(result.links),
        "dropped": result.dropped,
    }
    doc["objects"] = object_rows(result.labels, args.scale)
    write_json(json_path, doc, overwrite=args.overwrite)
    written.add(labels_path.resolve())
    s = "" if result.count == 1 else "s"
    tiles = f"; {tiling.message}" if tiling.settings else ""
    return f"wrote {labels_path} ({result.count} 3D object{s} in {n} slices{tiles})"


def object_rows(labels: np.ndarray, scale: Any = None) -> list[dict[str, Any]]:
    """One row per 3D object: label, voxels, volume (times ``prod(scale)``), slices and
    bounding box (z0, y0, x0, z1, y1, x1; ends exclusive)."""
    from scipy import ndimage

    voxel = float(np.prod(scale)) if scale is not None else 1.0
    counts = np.bincount(labels.ravel().astype(np.int64))
    rows = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows.append({
            "label": k,
            "voxels": int(counts[k]),
            "volume": round(float(counts[k]) * voxel, 6),
            "slices": [int(box[0].start), int(box[0].stop - 1)],
            "bbox": [int(s.start) for s in box] + [int(s.stop) for s in box],
        })  # fmt: skip
    return rows


__all__ = ["Segmented", "add_volume_options", "object_rows", "segment_planes",
           "segment_volume_file", "tiled_generator"]  # fmt: skip
