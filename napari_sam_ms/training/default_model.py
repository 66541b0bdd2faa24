"""The proposed small default model and the command that trains it from scratch.

The model is SAM's architecture at a CPU-trainable size (see :data:`DEFAULT_CONFIG`); it is
trained on synthetic microscopy (:mod:`napari_sam_ms.training.synthetic`) with the SAM
recipe of :mod:`napari_sam_ms.training.trainer`. Training and validation images come from
disjoint seed ranges, and the test set of ``benchmarks/evaluate_default_model.py`` from a
third, so the checkpoint can be rebuilt and checked::

    python -m napari_sam_ms.training.default_model --out run1.ckpt --steps 2000 --seed 0

then the continuations the README lists (the last one refines the patch grid).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from ..weights.config import CONFIGS

# ``_build_sam`` keywords (``CONFIGS["micro"]``): 256-pixel input, 8-pixel patches (a 32x32
# token grid), low-res masks of 128x128.
DEFAULT_CONFIG: dict = CONFIGS["micro"]
# Training from scratch uses 16-pixel patches (a 16x16 grid: four times cheaper steps); the
# last run refines the grid to the default's 8-pixel patches (:func:`finer_patches`).
FIRST_PATCH_SIZE = 16

DEFAULT_CHECKPOINT = "sam_ms_micro.ckpt"  # proposed file name under weights/
TRAIN_KIND = "mixed"  # nuclei and cells


# Object-size curriculum: (object scale, share of the steps) of the synthetic training
# images. From random weights SAM's decoder does not use the point's
# position on small objects: measured with position as the only cue (a disc around the
# point, zero image features), discs of radius 20 px are learned within 80 steps, radius 8
# never from scratch, but radius 8 is reached when the radius shrinks step by step
# (24 -> 16 -> 12 -> 8 px: IoU 0.59 -> 0.36 in 260 steps). Likewise objects are shown
# large first and shrink to natural size. One optimizer and one learning-rate schedule
# run through all stages.
CURRICULUM: tuple[tuple[float | tuple[float, float], float], ...] = (
    (3.0, 0.14),
    (2.0, 0.14),
    (1.4, 0.17),
    ((0.8, 1.25), 0.55),
)
PE_SCALE = 1.0  # std of the prompt encoder's random Fourier matrix (Meta's default)
QK_GAIN = 4.0  # decoder attention: query and key projections start tied and scaled by this


def build_default_model(seed: int = 0, **overrides):
    """A randomly initialised model of :data:`DEFAULT_CONFIG` (seeded) with ``overrides``."""
    import mindspore as ms

    from ..build_sam import build_sam_from_config

    ms.set_seed(seed)
    return build_sam_from_config({**DEFAULT_CONFIG, **overrides})


def init_for_training(model, seed: int = 0, pe_scale: float = PE_SCALE, qk_gain: float = QK_GAIN):
    """Starting values that let the prompt's position reach the mask (same architecture).

    - The prompt encoder's random Fourier matrix (a stored buffer, part of the checkpoint)
      is drawn with std ``pe_scale`` (reproducible from ``seed``).
    - In every decoder attention the key projection starts equal to the query projection,
      both scaled by ``qk_gain``: a query then attends sharply to keys at positions like its
      own. Measured on the position-only task above: gain 4 learns, gain 1 does not (and
      std 3 for the Fourier matrix, tried earlier, does not either).
    """
    import mindspore as ms
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    g = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    g.set_data(ms.Tensor((rng.standard_normal(g.shape) * pe_scale).astype(np.float32)))
    for _, cell in model.mask_decoder.transformer.cells_and_names():
        if hasattr(cell, "q_proj") and hasattr(cell, "k_proj"):
            w = cell.q_proj.weight.asnumpy() * qk_gain
            cell.q_proj.weight.set_data(ms.Tensor(w))
            cell.k_proj.weight.set_data(ms.Tensor(w.copy()))
    return model


def finer_patches(
    params: dict[str, np.ndarray], config: dict, patch_size: int
) -> tuple[dict[str, np.ndarray], dict]:
    """Weights and config of the same model with smaller patches (a finer token grid).

    The new model starts out computing nearly what the old one computes on the image
    enlarged by ``factor = old / new patch size`` (nearest neighbour), so training can
    continue from it: each patch kernel is summed over ``factor x factor`` blocks (exact for
    that enlarged image), the absolute position embedding is resized bilinearly to the new
    grid and the global attention blocks' relative position tables are resized linearly with
    distances scaled by ``factor`` (windowed blocks keep theirs: the window size in tokens is
    unchanged). Everything else (neck, prompt encoder, mask decoder) is size-independent.
    """
    from scipy import ndimage

    old = int(config.get("patch_size", 16))
    factor = old // patch_size
    if factor < 2 or old % patch_size:
        raise ValueError(
            f"patch size {patch_size} must divide the checkpoint's {old} at least twice"
        )
    grid = config["image_size"] // old
    table = 2 * grid - 1
    new_table = 2 * grid * factor - 1
    # new table index j is distance j - (new_table - 1) / 2 tokens = that / factor old tokens
    at = (np.arange(new_table) - (new_table - 1) / 2) / factor + (table - 1) / 2
    globals_ = {f"image_encoder.blocks.{i}.attn." for i in config["encoder_global_attn_indexes"]}
    out = {}
    for name, value in params.items():
        value = np.asarray(value, np.float32)
        if name == "image_encoder.patch_embed.proj.weight":
            o, c, h, w = value.shape
            value = value.reshape(o, c, h // factor, factor, w // factor, factor).sum((3, 5))
        elif name == "image_encoder.pos_embed":
            value = ndimage.zoom(
                value, (1, factor, factor, 1), order=1, grid_mode=True, mode="nearest"
            )
        elif "rel_pos" in name and name.rsplit("rel_pos", 1)[0] in globals_:
            value = np.stack([np.interp(at, np.arange(table), col) for col in value.T], axis=1)
        out[name] = value.astype(np.float32)
    return out, {**config, "patch_size": patch_size}


def train_default(
    out: str,
    steps: int = 2400,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 4,
    kind: str = TRAIN_KIND,
    minutes: float | None = None,
    curriculum=CURRICULUM,
    log=print,
    log_every: int = 25,
    start_from: str | None = None,
    patch_size: int | None = None,
    stop_after: int | None = None,
    first_image: int = 0,
    **config,
):
    """Train the default model from scratch (or continue a run) on synthetic data and save
    it to ``out``.

    The training images change at the stages of :data:`CURRICULUM` (fresh seeds, smaller
    objects); the model, the optimizer state and one warm-up + cosine learning
    rate schedule carry through. The checkpoint is written atomically at the end (and on
    cancel or time-out), with a ``.json`` log beside it.

    Args:
        out: checkpoint path (``.ckpt``).
        steps: batches over all stages (each makes 1 + correction_rounds updates).
        seed: seeds the weights, the batch order and the prompts.
        n_train: at most this many synthetic training images per stage.
        n_val: held-out validation images at natural object size (validation seed range).
        kind: ``nuclei``, ``cells`` or ``mixed``.
        minutes: stop (and save) after this much wall time, if given.
        curriculum: (object scale, share of steps) stages.
        log_every: print mean training IoU and loss every this many steps (0: never).
        start_from: continue from this checkpoint instead of random weights (a new
            optimizer and learning-rate schedule). Training images are drawn from the same
            seed ranges as a first run; ``seed`` changes the batch order and prompts.
        patch_size: with ``start_from``, first refine its token grid to this patch size
            (:func:`finer_patches`); from scratch, the patch size (default
            :data:`FIRST_PATCH_SIZE`).
        stop_after: stop (and save) after this many steps of the ``steps``-step schedule
            (reproduces a run that stopped at its time limit).
        first_image: seed of the first training image (stage ``k`` starts at
            ``first_image + 10_000 * k``, all within the training seed range), so a
            continuation can see images earlier runs did not.
        config: :class:`TrainConfig` fields to override (e.g. ``lr``).

    Returns:
        The :class:`TrainResult`.
    """

    from ..runtime import configure
    from .synthetic import TRAIN_SEEDS, SyntheticDataset
    from .trainer import SamTrainer, TrainConfig

    last = first_image + 10_000 * (len(curriculum) - 1) + n_train
    if first_image < TRAIN_SEEDS.start or last > TRAIN_SEEDS.stop:
        raise ValueError(
            f"first_image={first_image}: the training images (up to seed {last - 1}) must lie "
            f"in the training seed range {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1}"
        )
    configure()
    # No graph kernel fusion here: on MindSpore 2.10 CPU it is 25-35 % faster but computes
    # the prompt encoder and the two-way transformer wrongly (errors of order 1, measured
    # against op-by-op execution), which had kept every earlier run on the empty-mask plateau.
    if start_from is None:
        first = FIRST_PATCH_SIZE if patch_size is None else patch_size
        model = init_for_training(build_default_model(seed, patch_size=first), seed)
    else:
        from ..build_sam import build_sam_from_checkpoint, build_sam_from_config
        from ..weights.checkpoint import load_params, read_checkpoint

        if patch_size is None:
            model = build_sam_from_checkpoint(start_from)
        else:
            params, old = read_checkpoint(start_from)
            params, new = finer_patches(params, old, patch_size)
            model = build_sam_from_config(new)
            load_params(model, params, start_from)
    val = SyntheticDataset(n_val, kind, "val")
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    settings = dict(
        steps=steps,
        lr=8e-4,
        warmup_steps=min(50, steps // 10 + 1),
        weight_decay=0.05,
        batch_images=4,
        objects_per_image=8,
        correction_rounds=1,
        train_encoder=True,
        val_every=max(1, steps // 6),
        val_at_start=False,
        seed=seed,
    )
    settings.update(config)
    schedule, start = {}, 0
    total = sum(share for _, share in curriculum)
    for k, (scale, share) in enumerate(curriculum):
        n = max(1, round(steps * share / total))
        # Images are rendered lazily (0.1-0.5 s each): enough for variety, few enough to be
        # reused (with random flips and turns) within a stage.
        n_images = min(n_train, max(64, n * settings["batch_images"] // 3))
        first = first_image + 10_000 * k
        schedule[start] = SyntheticDataset(n_images, kind, first, scale=scale)
        start += n
    recent: list[dict] = []
    done = [0]

    def progress(info: dict) -> None:
        if info["event"] != "step":
            return
        done[0] = info["step"]
        if log is None or not log_every:
            return
        recent.append(info)
        if len(recent) == log_every:
            iou = np.mean([h["iou0"] for h in recent])
            loss = np.mean([h["loss"] for h in recent])
            log(f"step {info['step']}: training IoU (first prompt) {iou:.3f}, loss {loss:.3f}")
            recent.clear()

    trainer = SamTrainer(
        model,
        schedule[0],
        val,
        TrainConfig(**settings),
        out=out,
        progress=progress,
        cancel=lambda: (
            (deadline is not None and time.monotonic() > deadline)
            or (stop_after is not None and done[0] >= stop_after)
        ),
        log=log,
    )
    trainer.schedule = schedule
    if log is not None:
        stages = zip(schedule, curriculum, strict=True)
        shown = ", ".join(f"object scale {c[0]} from step {s}" for s, c in stages)
        log(f"training {steps} steps: {shown}")
    return trainer.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train the default model from scratch."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_sam_ms.training.default_model",
        description="Train the small default SAM from scratch on synthetic microscopy.",
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--kind", default=TRAIN_KIND, choices=("nuclei", "cells", "mixed"))
    parser.add_argument("--minutes", type=float, default=None, help="wall-time limit")
    parser.add_argument(
        "--stop-after", type=int, help="stop after this many steps of the --steps schedule"
    )
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--objects-per-image", type=int, default=8)
    parser.add_argument("--lr", type=float, default=8e-4, help="peak learning rate")
    parser.add_argument(
        "--start-from", help="continue from this checkpoint (natural-size objects only)"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        help="with --start-from: first refine its token grid to this patch size; from "
        f"scratch: the patch size (default {FIRST_PATCH_SIZE})",
    )
    parser.add_argument(
        "--first-image",
        type=int,
        default=0,
        help="seed of the first training image (a continuation can start past the images "
        "earlier runs used)",
    )
    args = parser.parse_args(argv)
    result = train_default(
        args.out,
        args.steps,
        args.seed,
        args.n_train,
        kind=args.kind,
        minutes=args.minutes,
        batch_images=args.batch_images,
        objects_per_image=args.objects_per_image,
        lr=args.lr,
        start_from=args.start_from,
        patch_size=args.patch_size,
        stop_after=args.stop_after,
        first_image=args.first_image,
        curriculum=CURRICULUM if args.start_from is None else CURRICULUM[-1:],
    )
    return 0 if result.steps_done else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CURRICULUM",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CONFIG",
    "FIRST_PATCH_SIZE",
    "build_default_model",
    "finer_patches",
    "init_for_training",
    "main",
    "train_default",
]
