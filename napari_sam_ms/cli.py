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
point and scores that made it. Files are written atomically and never overwritten without
``--overwrite``. A failing input gets a one-line error and the others are still processed; the
exit status is then 1.

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
from pathlib import Path
from typing import Any

import numpy as np

PROG = "napari-sam-ms"

# Whole-image parameters on the command line: (type, help). Defaults are Meta's
# (napari_sam_ms.pipeline.AMG_DEFAULTS), except the filters chosen for the embedded model
# when it runs (whole_image_params); point_grids and output_mode are not offered.
AMG_OPTIONS: dict[str, tuple[type, str]] = {
    "points_per_side": (
        int,
        "grid of N x N prompt points over the image; more finds smaller objects, slower",
    ),
    "points_per_batch": (int, "grid points decoded at once; affects speed and memory only"),
    "pred_iou_thresh": (
        float,
        "keep masks whose predicted quality (IoU) is above this; 0 keeps all. Lower it "
        "(e.g. 0.7) when the default finds nothing on microscopy images",
    ),
    "stability_score_thresh": (
        float,
        "keep masks that barely change when the mask cutoff moves; 0 keeps all. Lower it "
        "(e.g. 0.8) when the default finds nothing",
    ),
    "stability_score_offset": (float, "how far the cutoff moves for the stability score"),
    "box_nms_thresh": (float, "box IoU above which a duplicate mask is dropped"),
    "crop_n_layers": (
        int,
        "also segment 2x2, 4x4, ... crops of the image (finer, much slower); 0 = whole image only",
    ),
    "crop_nms_thresh": (float, "box IoU above which duplicates between crops are dropped"),
    "crop_overlap_ratio": (float, "overlap of neighbouring crops, as a fraction of crop size"),
    "crop_n_points_downscale_factor": (
        int,
        "grid points per side in crop layer i are points-per-side / factor**i",
    ),
    "min_mask_region_area": (
        int,
        "remove islands and fill holes smaller than this many pixels in each mask; 0 = off",
    ),
    "mask_overlap_thresh": (
        float,
        "drop a mask when more than this fraction of it lies under better-scored masks "
        "(keeps touching objects apart); 1 = off, as Meta's generator",
    ),
}


class InputError(Exception):
    """A problem with one input; reported on one line, the run goes on."""


def _parser() -> argparse.ArgumentParser:
    from .pipeline import AMG_DEFAULTS
    from .weights import DEFAULT_EMBEDDED, whole_image_settings

    parser = argparse.ArgumentParser(
        prog=PROG, description="Segment Anything (SAM) on MindSpore, from the command line."
    )
    sub = parser.add_subparsers(dest="command", metavar="{segment,finetune,convert}")
    seg = sub.add_parser(
        "segment",
        help="segment whole images into label images",
        description="Segment every object in each image (SAM whole-image mode) and write "
        "<stem>_labels.tif (ids 1..N, largest first; smaller masks win where masks overlap) "
        "and <stem>_labels.json (model, parameters, per-label scores and prompt points).",
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
    group = seg.add_argument_group("whole-image parameters (Meta's SamAutomaticMaskGenerator)")
    own = whole_image_settings(DEFAULT_EMBEDDED)
    for name, (kind, text) in AMG_OPTIONS.items():
        shown = f"{AMG_DEFAULTS[name]:.4g}"  # 512/1500 as 0.3413
        if name in own:
            shown += f"; {own[name]:.4g} for the embedded micro model"
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=None,
            metavar="N" if kind is int else "X",
            help=f"{text} (default: {shown})",
        )
        # Python-style spelling too (as in the model card), not listed in --help.
        seg.add_argument(
            f"--{name}", dest=name, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    group.add_argument(
        "--mirror-average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each grid point's masks over the image and its mirror images (ours, "
        "not Meta's; about four times slower; default: on for the embedded micro model, "
        "off for official models)",
    )
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
    """Entry point of the ``napari-sam-ms`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
def _error(message: object) -> None:
    """One line on stderr (through tqdm, so it does not break a progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def whole_image_params(args: argparse.Namespace, model_info: dict[str, Any]) -> dict[str, Any]:
    """Whole-image parameters: as given, else the model's own defaults (the embedded model
    loaded from the registry), else Meta's."""
    from .pipeline import AMG_DEFAULTS

    own = model_info.get("whole_image_defaults", {})
    params = {}
    for name, (kind, _) in AMG_OPTIONS.items():
        given = getattr(args, name)
        params[name] = given if given is not None else kind(own.get(name, AMG_DEFAULTS[name]))
    given = getattr(args, "mirror_average", None)
    params["mirror_average"] = bool(own.get("mirror_average", False) if given is None else given)
    return params


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Build the model and describe it for the sidecar."""
    from .build_sam import normalize_model_type, sam_model_registry

    info: dict[str, Any] = {"type": None, "checkpoint": None, "checkpoint_sha256": None}
    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt}: no such file")
        if args.model is None:
            from .build_sam import build_sam_from_checkpoint

            model = build_sam_from_checkpoint(ckpt)
        else:
            model = sam_model_registry[normalize_model_type(args.model)](checkpoint=ckpt)
        info["checkpoint"] = str(ckpt.resolve())
    else:
        from .weights import default_model_type

        args.model = args.model or default_model_type()
        model_type = normalize_model_type(args.model)
        if model_type == "tiny":
            print(
                f"{PROG}: warning: --model tiny without --checkpoint has random weights "
                "(for tests only)",
                file=sys.stderr,
            )
            model = sam_model_registry["tiny"]()
            info["random_weights"] = True
        else:
            from .weights import fetch_checkpoint, mirror_average_default, whole_image_settings

            ckpt = Path(fetch_checkpoint(model_type))
            model = sam_model_registry[model_type](checkpoint=ckpt)
            info["checkpoint"] = str(ckpt.resolve())
            info["official_weights"] = model_type != "micro"
            info["whole_image_defaults"] = whole_image_settings(model_type)
            if mirror_average_default(model_type):
                info["whole_image_defaults"]["mirror_average"] = True
    config = getattr(model, "config", {}) or {}
    info["type"] = _model_name(config) or normalize_model_type(args.model or "vit_b")
    info["config"] = dict(config)
    if info["checkpoint"] is not None:
        from .weights import sha256_of

        info["checkpoint_sha256"] = sha256_of(info["checkpoint"])
    return model, info


def _model_name(config: dict[str, Any]) -> str | None:
    from .build_sam import CONFIGS

    for name in CONFIGS:
        if all(config.get(k) == v for k, v in CONFIGS[name].items()):
            return name
    return None


def _outputs(image: Path, out_dir: Path) -> tuple[Path, Path]:
    return out_dir / f"{image.stem}_labels.tif", out_dir / f"{image.stem}_labels.json"


def _object_rows(records: list[dict[str, Any]], labels: np.ndarray, index: np.ndarray) -> list:
    visible = np.bincount(labels.ravel(), minlength=len(index) + 1)
    rows = []
    for k, i in enumerate(index, start=1):
        rec = records[int(i)]
        row: dict[str, Any] = {"label": k, "visible_area": int(visible[k])}
        for key in ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
            if key in rec:
                row[key] = rec[key]
        rows.append(row)
    return rows


def _sha256(path: Path) -> str:
    from .weights import sha256_of

    return sha256_of(path)


def segment(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run ``segment`` for parsed arguments; returns the exit status."""
    from tqdm import tqdm

    from . import __version__, runtime
    from .pipeline import make_generator
    from .utils.image import to_rgb_uint8
    from .utils.io import read_image, write_json, write_labels_tiff
    from .utils.labels import masks_to_labels

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        _error(f"--out {out_dir}: exists and is not a folder")
        return 2
    if args.overwrite and args.skip_existing:
        _error("--overwrite and --skip-existing contradict each other")
        return 2
    try:
        device = runtime.configure(device=args.device)
        model, model_info = _load_model(args)
        params = whole_image_params(args, model_info)
        generator = make_generator(model, **params)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        _error(exc)
        return 2

    import mindspore

    failed = 0
    written: set[Path] = set()
    show = not args.no_progress
    images = tqdm(args.images, desc="images", unit="image", disable=not show)
    for name in images:
        path = Path(name)
        labels_path, json_path = _outputs(path, out_dir)
        try:
            if labels_path.resolve() in written:
                raise InputError(
                    f"{labels_path} was written for an earlier input of this run (same file "
                    "name); segment them into different --out folders"
                )
            existing = [p for p in (labels_path, json_path) if p.exists()]
            if existing and args.skip_existing:
                images.write(f"skipped {path}: {existing[0]} exists")
                continue
            if existing and not args.overwrite:
                raise InputError(f"{existing[0]} exists (pass --overwrite to replace it)")
            raw = read_image(path)
            rgb = to_rgb_uint8(raw)
            start = time.perf_counter()
            records = _generate(generator, rgb, show, path.name)
            labels, index = masks_to_labels(records, shape=rgb.shape[:2], return_index=True)
            finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
            sidecar = {
                "napari_sam_ms_version": __version__,
                "mindspore_version": mindspore.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "command": [PROG, *argv],
                "input": {
                    "path": str(path.resolve()),
                    "sha256": _sha256(path),
                    "shape": list(raw.shape),
                    "dtype": str(raw.dtype),
                    "value_range": [finite.min(), finite.max()] if finite.size else None,
                    "conversion": "to_rgb_uint8: uint8 as is, other types scaled min..max "
                    "to 0..255 (NaN as the minimum), gray repeated to RGB, alpha dropped",
                },
                "model": model_info,
                "device": device,
                "parameters": params,
                "labels": {
                    "file": labels_path.name,
                    "dtype": str(labels.dtype),
                    "count": len(index),
                    "masks_found": len(records),
                    "order": "ids 1..N by decreasing mask area; where masks overlap the "
                    "smaller mask wins; masks left with no pixels get no id",
                },
                "seconds": round(time.perf_counter() - start, 3),
                "objects": _object_rows(records, labels, index),
            }
            write_labels_tiff(labels_path, labels, overwrite=args.overwrite)
            write_json(json_path, sidecar, overwrite=args.overwrite)
            written.add(labels_path.resolve())
            images.write(
                f"wrote {labels_path} ({len(index)} label{'' if len(index) == 1 else 's'})"
            )
        except KeyboardInterrupt:
            raise
        except (InputError, OSError, ValueError) as exc:
            failed += 1
            _error(f"{path}: {exc}" if str(path) not in str(exc) else exc)
        except Exception as exc:  # keep going with the other images
            failed += 1
            _error(f"{path}: {type(exc).__name__}: {exc}")
    images.close()
    if failed:
        _error(f"{failed} of {len(args.images)} input(s) failed")
    return 1 if failed else 0


def _generate(generator: Any, image: np.ndarray, show: bool, name: str) -> list[dict[str, Any]]:
    """Run the generator with a per-batch progress bar when it reports progress."""
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


if __name__ == "__main__":
    sys.exit(main())
