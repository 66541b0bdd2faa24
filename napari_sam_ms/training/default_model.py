"""The small default model and the command that trains it from scratch.

The model is SAM's architecture at a CPU-trainable size (:data:`DEFAULT_CONFIG`), trained on
synthetic microscopy (:mod:`napari_sam_ms.training.synthetic`) with the SAM recipe of
:mod:`napari_sam_ms.training.trainer`. Training, validation and test images
(``benchmarks/evaluate_default_model.py``) come from disjoint seed ranges, so the checkpoint
can be rebuilt and checked::

    python -m napari_sam_ms.training.default_model --out run1.ckpt --steps 2000 --seed 0

then the continuations listed in docs/training.md (the last ones refine the patch grid).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..weights.config import CONFIGS
from .designs import DESIGNS, PE_SCALE, QK_GAIN, build_design, init_for_training  # noqa: F401
from .synthetic import TRAIN_SEEDS, SyntheticDataset

if TYPE_CHECKING:
    from .trainer import TrainResult

# ``_build_sam`` keywords (``CONFIGS["micro"]``): 256-pixel input, 8-pixel patches (a 32x32
# token grid), low-res masks of 128x128.
DEFAULT_CONFIG: dict = CONFIGS["micro"]
# Training from scratch uses 16-pixel patches (a 16x16 token grid); the last runs refine the
# grid to the default's 8-pixel patches (:func:`finer_patches`).
FIRST_PATCH_SIZE = 16

DEFAULT_CHECKPOINT = "sam_ms_micro.ckpt"  # proposed file name under weights/
TRAIN_KIND = "mixed"  # nuclei and cells

Curriculum = tuple[tuple[float | tuple[float, float], float], ...]

# Object-size curriculum: (object scale, share of the steps) of the synthetic training images.
# Objects are shown large first and shrink to natural size: from random weights SAM's decoder
# learns to use the point's position on large objects only (docs/training.md). One optimizer
# and one learning-rate schedule run through all stages.
CURRICULUM: Curriculum = (
    (3.0, 0.14),
    (2.0, 0.14),
    (1.4, 0.17),
    ((0.8, 1.25), 0.55),
)
STAGE_SEED_STRIDE = 10_000  # stage k's images start at seed first_image + k * this

# :class:`~napari_sam_ms.training.trainer.TrainConfig` fields of a default-model run
# (``steps``-dependent ones are set by :func:`trainer_settings`).
TRAINER_DEFAULTS: dict[str, Any] = dict(
    lr=8e-4,
    weight_decay=0.05,
    batch_images=4,
    objects_per_image=8,
    correction_rounds=1,
    train_encoder=True,
    val_at_start=False,
)


@dataclass(frozen=True)
class DefaultTrainingConfig:
    """One run of :func:`train_default` (the command line's options).

    Attributes:
        out: checkpoint path (``.ckpt``); a ``.json`` log is written beside it.
        steps: batches over all stages (each makes 1 + correction_rounds updates).
        seed: seeds the weights, the batch order and the prompts.
        n_train: at most this many synthetic training images per stage.
        n_val: held-out validation images at natural object size (validation seed range).
        kind: ``nuclei``, ``cells``, ``mixed`` or ``wide`` (:mod:`.synthetic_wide`).
        minutes: stop (and save) after this much wall time, if given.
        curriculum: (object scale, share of steps) stages.
        log_every: log mean training IoU and loss every this many steps (0: never).
        start_from: continue from this checkpoint instead of random weights (a new optimizer
            and learning-rate schedule; training images from the same seed ranges as a first
            run, ``seed`` changes the batch order and prompts).
        patch_size: with ``start_from``, first refine its token grid to this patch size
            (:func:`finer_patches`); from scratch, the patch size (None:
            :data:`FIRST_PATCH_SIZE`).
        stop_after: stop (and save) after this many steps of the ``steps``-step schedule
            (reproduces a run that stopped at its time limit).
        first_image: seed of the first training image (stage ``k`` starts at
            ``first_image + STAGE_SEED_STRIDE * k``, all within the training seed range), so a
            continuation can see images earlier runs did not.
        trainer: :class:`~napari_sam_ms.training.trainer.TrainConfig` fields that replace
            :data:`TRAINER_DEFAULTS` (e.g. ``lr``, ``batch_images``).
        design: the model from scratch, one of :data:`~.designs.DESIGNS` (``micro``:
            today's default; ``micro_t``, ``micro_t_hq``: TinyViT candidates).
        resume: go on with the run whose state is kept beside ``out`` (asked with the same
            settings; ``minutes``, ``stop_after`` and ``save_every`` may change). Without it, a
            run refuses to start over a kept state (it would be lost).
    """

    out: str
    steps: int = 2400
    seed: int = 0
    n_train: int = 1000
    n_val: int = 4
    kind: str = TRAIN_KIND
    minutes: float | None = None
    curriculum: Curriculum = CURRICULUM
    log_every: int = 25
    start_from: str | None = None
    patch_size: int | None = None
    stop_after: int | None = None
    first_image: int = 0
    trainer: Mapping[str, Any] = field(default_factory=dict)
    design: str = "micro"
    resume: bool = False


# The fields of a run that pick its data and model (checked when it is resumed); the others
# say where it writes and when it stops.
RUN_FIELDS = tuple(
    "steps seed n_train n_val kind curriculum start_from patch_size first_image design".split()
)


def build_default_model(seed: int = 0, **overrides):
    """A randomly initialised model of :data:`DEFAULT_CONFIG` (seeded) with ``overrides``."""
    import mindspore as ms

    from ..build_sam import build_sam_from_config

    ms.set_seed(seed)
    return build_sam_from_config({**DEFAULT_CONFIG, **overrides})


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
    config: DefaultTrainingConfig, log: Callable[[str], Any] | None = print
) -> TrainResult:
    """Train the default model from scratch (or continue a run) on synthetic data.

    The training images change at the stages of ``config.curriculum`` (fresh seeds, smaller
    objects); the model, the optimizer state and one warm-up + cosine learning-rate schedule
    carry through. The checkpoint is written atomically to ``config.out`` at the end (and on
    cancel or time-out), with a ``.json`` log beside it. No graph kernel fusion here: on
    MindSpore 2.10 CPU it computes the prompt encoder and the two-way transformer wrongly.

    Args:
        config: the run.
        log: receives progress lines (None: silent).

    Returns:
        The :class:`~napari_sam_ms.training.trainer.TrainResult`.
    """
    from ..runtime import configure
    from .run_state import state_path
    from .trainer import SamTrainer, TrainConfig

    check_image_seeds(config)
    kept = state_path(config.out)
    if kept.is_file() and not config.resume:
        raise ValueError(
            f"{kept} holds an unfinished run: add --resume to go on with it, or give another "
            "--out (or delete that file to start this one anew)"
        )
    configure()
    model = starting_model(config)
    val = SyntheticDataset(config.n_val, config.kind, "val")
    settings = TrainConfig(**trainer_settings(config))
    schedule = image_schedule(config, settings.batch_images)
    steps = _StepLog(log, config.log_every)
    trainer = SamTrainer(
        model,
        schedule[0],
        val,
        settings,
        out=config.out,
        progress=steps,
        cancel=_stop_rule(config, steps),
        log=log,
        keep_state=True,
        run_info={k: getattr(config, k) for k in RUN_FIELDS},
    )
    trainer.schedule = schedule
    if config.resume:
        steps.done = trainer.resume()
    if log is not None:
        stages = zip(schedule, config.curriculum, strict=True)
        shown = ", ".join(f"object scale {c[0]} from step {s}" for s, c in stages)
        log(f"training {config.steps} steps: {shown}")
    return trainer.run()


def check_image_seeds(config: DefaultTrainingConfig) -> None:
    """Refuse a ``first_image`` whose stages would leave the training seed range."""
    first = config.first_image
    last = first + STAGE_SEED_STRIDE * (len(config.curriculum) - 1) + config.n_train
    if first < TRAIN_SEEDS.start or last > TRAIN_SEEDS.stop:
        raise ValueError(
            f"first_image={first}: the training images (up to seed {last - 1}) must lie "
            f"in the training seed range {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1}"
        )


def starting_model(config: DefaultTrainingConfig):
    """The model a run starts from: seeded random weights (:func:`init_for_training`) or
    ``config.start_from``'s, its token grid refined to ``config.patch_size`` if given."""
    if config.start_from is None:
        first = config.patch_size
        if config.design == "micro" and first is None:
            first = FIRST_PATCH_SIZE
        return build_design(config.design, config.seed, first)
    from ..build_sam import build_sam_from_checkpoint, build_sam_from_config
    from ..weights.checkpoint import load_params, read_checkpoint

    if config.patch_size is None:
        return build_sam_from_checkpoint(config.start_from)
    params, old = read_checkpoint(config.start_from)
    params, new = finer_patches(params, old, config.patch_size)
    model = build_sam_from_config(new)
    load_params(model, params, config.start_from)
    return model


def trainer_settings(config: DefaultTrainingConfig) -> dict[str, Any]:
    """Keyword arguments of the run's ``TrainConfig``: :data:`TRAINER_DEFAULTS`, the
    ``steps``-dependent warm-up and validation interval, then ``config.trainer``."""
    steps = config.steps
    return {
        "steps": steps,
        "warmup_steps": min(50, steps // 10 + 1),
        "val_every": max(1, steps // 6),
        "seed": config.seed,
        **TRAINER_DEFAULTS,
        **config.trainer,
    }


def image_schedule(config: DefaultTrainingConfig, batch_images: int) -> dict[int, SyntheticDataset]:
    """The training images of each curriculum stage, keyed by the step the stage starts at.

    Images are rendered lazily; a stage has enough for variety and few enough to be reused
    (with random flips and turns) within the stage.
    """
    schedule: dict[int, SyntheticDataset] = {}
    start = 0
    total = sum(share for _, share in config.curriculum)
    for k, (scale, share) in enumerate(config.curriculum):
        n = max(1, round(config.steps * share / total))
        n_images = min(config.n_train, max(64, n * batch_images // 3))
        first = config.first_image + STAGE_SEED_STRIDE * k
        schedule[start] = SyntheticDataset(n_images, config.kind, first, scale=scale)
        start += n
    return schedule


class _StepLog:
    """Trainer progress callback: counts the steps done and logs mean training IoU (first
    prompt) and loss every ``every`` steps."""

    def __init__(self, log: Callable[[str], Any] | None, every: int) -> None:
        self.log = log
        self.every = every
        self.done = 0
        self.recent: list[dict] = []

    def __call__(self, info: dict) -> None:
        if info["event"] != "step":
            return
        self.done = info["step"]
        if self.log is None or not self.every:
            return
        self.recent.append(info)
        if len(self.recent) == self.every:
            iou = np.mean([h["iou0"] for h in self.recent])
            loss = np.mean([h["loss"] for h in self.recent])
            self.log(f"step {info['step']}: training IoU (first prompt) {iou:.3f}, loss {loss:.3f}")
            self.recent.clear()


def _stop_rule(config: DefaultTrainingConfig, steps: _StepLog) -> Callable[[], bool]:
    """True once the wall-time limit has passed or ``stop_after`` steps are done."""
    deadline = None if config.minutes is None else time.monotonic() + 60 * config.minutes

    def cancel() -> bool:
        late = deadline is not None and time.monotonic() > deadline
        return late or (config.stop_after is not None and steps.done >= config.stop_after)

    return cancel


def _parser() -> argparse.ArgumentParser:
    """The command line's options; defaults from :class:`DefaultTrainingConfig` and
    :data:`TRAINER_DEFAULTS`."""
    d = DefaultTrainingConfig(out="")
    parser = argparse.ArgumentParser(
        prog="python -m napari_sam_ms.training.default_model",
        description="Train the small default SAM from scratch on synthetic microscopy.",
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--n-train", type=int, default=d.n_train)
    parser.add_argument("--kind", default=d.kind, choices=("nuclei", "cells", "mixed", "wide"))
    parser.add_argument("--design", default=d.design, help=", ".join(DESIGNS))
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    parser.add_argument("--minutes", type=float, default=d.minutes, help="wall-time limit")
    parser.add_argument(
        "--stop-after", type=int, help="stop after this many steps of the --steps schedule"
    )
    parser.add_argument("--batch-images", type=int, default=TRAINER_DEFAULTS["batch_images"])
    parser.add_argument(
        "--objects-per-image", type=int, default=TRAINER_DEFAULTS["objects_per_image"]
    )
    parser.add_argument(
        "--lr", type=float, default=TRAINER_DEFAULTS["lr"], help="peak learning rate"
    )
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
        "--natural-size",
        action="store_true",
        help="no object-size curriculum: objects at natural size from the first step",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the unfinished run kept beside --out (same options)",
    )
    parser.add_argument(
        "--first-image",
        type=int,
        default=d.first_image,
        help="seed of the first training image (a continuation can start past the images "
        "earlier runs used)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> DefaultTrainingConfig:
    """The run the command line asks for (a continuation trains at natural size only)."""
    return DefaultTrainingConfig(
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        n_train=args.n_train,
        kind=args.kind,
        minutes=args.minutes,
        curriculum=CURRICULUM[-1:] if args.start_from or args.natural_size else CURRICULUM,
        start_from=args.start_from,
        patch_size=args.patch_size,
        stop_after=args.stop_after,
        first_image=args.first_image,
        trainer=dict(
            lr=args.lr,
            batch_images=args.batch_images,
            objects_per_image=args.objects_per_image,
            save_every=args.save_every,
        ),
        design=args.design,
        resume=args.resume,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train the default model (exit status 1 if no step was done)."""
    result = train_default(config_from_args(_parser().parse_args(argv)))
    return 0 if result.steps_done else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CURRICULUM",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CONFIG",
    "FIRST_PATCH_SIZE",
    "STAGE_SEED_STRIDE",
    "TRAINER_DEFAULTS",
    "DefaultTrainingConfig",
    "RUN_FIELDS",
    "build_default_model",
    "check_image_seeds",
    "config_from_args",
    "finer_patches",
    "image_schedule",
    "init_for_training",
    "main",
    "starting_model",
    "train_default",
    "trainer_settings",
]
