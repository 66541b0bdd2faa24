"""Fine-tune SAM on your own images and instance labels: API and command line.

API::

    from napari_sam_ms.training.finetune import fine_tune
    result = fine_tune(model, images, labels, out="my_model.ckpt", steps=300)

Command line (also ``napari-sam-ms finetune``)::

    python -m napari_sam_ms.training.finetune img1.tif img2.tif \\
        --labels lab1.tif lab2.tif --model weights/sam_ms_micro.ckpt --out my_model.ckpt

The saved checkpoint stores the model's size, so every widget and the pipeline can load it
(:func:`napari_sam_ms.loader.load_model`).

Held-out figures: with three or more images, a fraction of the images is held out; with
fewer, a fraction of the objects of each image is (those objects are removed from the
training labels, so the model never sees them as targets).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..loader import LoadedModel, load_model
from .trainer import Progress, SamTrainer, TrainConfig, TrainResult

Pair = tuple[np.ndarray, np.ndarray]
CHECKPOINT_SUFFIXES = (".ckpt", ".pth")


def split_train_val(
    pairs: Sequence[Pair], fraction: float, seed: int = 0
) -> tuple[list[Pair], list[Pair] | None]:
    """Hold out images (three or more) or objects (fewer images) for validation."""
    pairs = list(pairs)
    if fraction <= 0:
        return pairs, None
    rng = np.random.default_rng(seed)
    if len(pairs) >= 3:
        n_val = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
        order = rng.permutation(len(pairs))
        val = [pairs[i] for i in sorted(order[:n_val])]
        return [pairs[i] for i in sorted(order[n_val:])], val
    train, val = [], []
    for image, labels in pairs:
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if len(ids) < 2:
            train.append((image, labels))
            continue
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        held = rng.choice(ids, n_val, replace=False)
        is_held = np.isin(labels, held)
        train.append((image, np.where(is_held, 0, labels)))
        val.append((image, np.where(is_held, labels, 0)))
    return train, (val or None)


def fine_tune(
    model,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    out: str | Path | None = None,
    steps: int = 200,
    lr: float = 1e-4,
    train_encoder: bool = False,
    val_fraction: float = 0.2,
    val: Sequence[Pair] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: Any = None,
    log: Callable[[str], Any] | None = print,
    **config: Any,
) -> TrainResult:
    """Fine-tune ``model`` in place on images with instance labels.

    Args:
        model: a Sam (the default model or an official one).
        images: 2D images (any dtype the predictor takes; grayscale or RGB).
        labels: one (H, W) integer label image per image, 0 = background.
        out: checkpoint to write (``.ckpt``), atomically, with a ``.json`` log beside it.
        steps: training steps (batches of objects).
        lr: peak learning rate (warm-up, then cosine decay).
        train_encoder: also train the image encoder (slower; otherwise each image is
            embedded once and the prompt encoder and mask decoder are trained).
        val_fraction: share of images (or objects) held out for the validation figures.
        val: explicit held-out (image, labels) pairs instead of ``val_fraction``.
        seed: seeds the split, the batches and the prompts.
        progress: called with a dict after every step and validation; False cancels.
        cancel: a ``threading.Event`` or callable; set/True stops after the current step.
        log: receives the validation lines (default: print).
        config: further :class:`TrainConfig` fields (``batch_images``, ``objects_per_image``,
            ``correction_rounds``, ``val_every``, ``weight_decay``...).

    Returns:
        The :class:`TrainResult` (validation figures before and during training).
    """
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images: give one each")
    if not images:
        raise ValueError("no images given")
    pairs = [
        (np.asarray(i), _check_labels(np.asarray(lab), k))
        for k, (i, lab) in enumerate(zip(images, labels, strict=True))
    ]
    if val is None:
        train, val = split_train_val(pairs, val_fraction, seed)
    else:
        train = pairs
    settings = dict(
        steps=steps,
        lr=lr,
        train_encoder=train_encoder,
        seed=seed,
        warmup_steps=min(20, max(1, steps // 10)),
        val_every=max(1, steps // 5),
    )
    settings.update(config)
    trainer = SamTrainer(model, train, val, TrainConfig(**settings), out, progress, cancel, log)
    return trainer.run()


def _check_labels(labels: np.ndarray, k: int) -> np.ndarray:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels {k} must be a 2D integer label image, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0:
        raise ValueError(f"labels {k} has negative ids")
    return labels


def starting_model(spec: str) -> LoadedModel:
    """The model to fine-tune, from ``--model``: a checkpoint file (``.ckpt``/``.pth``, or any
    existing file) or a model name, loaded by :func:`napari_sam_ms.loader.load_model`."""
    if Path(spec).suffix in CHECKPOINT_SUFFIXES or Path(spec).is_file():
        return load_model(None, spec)
    return load_model(spec, None)


PROG = "python -m napari_sam_ms.training.finetune"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune SAM on images with instance label files (TIFF/PNG; 0 = "
        "background, one id per object). Held-out validation figures are printed as it "
        "trains; the checkpoint loads in every widget and the pipeline.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (2D, gray or RGB)")
    parser.add_argument(
        "--labels", nargs="+", required=True, metavar="LABELS", help="label files, one per image"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model to start from: a checkpoint file (.ckpt or Meta .pth) or a name (vit_b, "
        "vit_l, vit_h: official weights, downloaded once; tiny: random weights, for tests)",
    )
    parser.add_argument("--out", required=True, metavar="X.ckpt", help="checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    parser.add_argument(
        "--train-encoder",
        action="store_true",
        help="also train the image encoder (much slower; default: prompt encoder and mask "
        "decoder only)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of images (three or more) or of objects held out for the validation "
        "figures; 0 = none (default: 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-images", type=int, default=2, help="images per step")
    parser.add_argument(
        "--objects-per-image", type=int, default=8, help="objects per image and step"
    )
    parser.add_argument(
        "--correction-rounds", type=int, default=2, help="correction clicks per step"
    )
    parser.add_argument(
        "--mask-chunk",
        type=int,
        default=0,
        help="masks per decoder pass (less memory, slower; 0 = as many as fit 2 GB per "
        "compiled pass: all 16 for micro, 2 for vit_b/l/h)",
    )
    return parser


def output_problem(path: Path, overwrite: bool, how: str = "pass --overwrite") -> str | None:
    """Why a fine-tuned model may not be written to ``path`` (None: it may); ``how`` says
    how to allow replacing an existing file."""
    if path.suffix != ".ckpt":
        return f"the model file must end in .ckpt, e.g. {path.with_suffix('.ckpt')}"
    if path.is_dir():
        return f"{path} is a folder: give a file name ending in .ckpt"
    if path.exists() and not overwrite:
        return f"{path} exists: {how} to replace it, or choose another file"
    return None


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments before anything is loaded (None: nothing)."""
    if len(args.images) != len(args.labels):
        return (
            f"{len(args.images)} images but {len(args.labels)} label files: give one label "
            "file per image, in the same order"
        )
    problem = output_problem(Path(args.out), args.overwrite)
    if problem is not None:
        return f"--out: {problem}"
    if args.steps < 1:
        return f"--steps must be at least 1, got {args.steps}"
    if not args.lr > 0:
        return f"--lr must be positive, got {args.lr}"
    if not 0 <= args.val_fraction < 1:
        return f"--val-fraction must be in [0, 1), got {args.val_fraction}"
    if args.mask_chunk < 0:
        return f"--mask-chunk must be 0 (automatic) or more, got {args.mask_chunk}"
    return None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line entry; returns the exit code (0 done, 1 nothing trained, 2 bad input)."""
    prog = prog or PROG
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code or 0)
    problem = _usage_problem(args)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2

    from ..utils.io import read_image

    try:
        images = [read_image(p) for p in args.images]
        labels = [read_image(p) for p in args.labels]
        loaded = starting_model(args.model)
        if loaded.note:
            print(f"{prog}: warning: {loaded.note}", file=sys.stderr)
        result = fine_tune(
            loaded.model,
            images,
            labels,
            out=args.out,
            steps=args.steps,
            lr=args.lr,
            train_encoder=args.train_encoder,
            val_fraction=args.val_fraction,
            seed=args.seed,
            batch_images=args.batch_images,
            objects_per_image=args.objects_per_image,
            correction_rounds=args.correction_rounds,
            mask_chunk=args.mask_chunk,
        )
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.steps_done else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["fine_tune", "main", "output_problem", "split_train_val", "starting_model"]
