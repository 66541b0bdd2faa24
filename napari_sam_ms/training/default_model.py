"""The proposed small default model and the command that trains it from scratch.

The model is SAM's architecture at a CPU-trainable size (see :data:`DEFAULT_CONFIG`); it is
trained on synthetic microscopy (:mod:`napari_sam_ms.training.synthetic`) with the SAM
recipe of :mod:`napari_sam_ms.training.trainer`. Training and validation images come from
disjoint seed ranges, and the test set of ``benchmarks/evaluate_default_model.py`` from a
third, so the checkpoint can be rebuilt and checked::

    python -m napari_sam_ms.training.default_model --out weights/sam_ms_micro.ckpt \\
        --steps 2400 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..build_sam import CONFIGS

# ``_build_sam`` keywords (``CONFIGS["micro"]``): 256-pixel input, 16x16 token grid, low-res
# masks of 64x64.
DEFAULT_CONFIG: dict = CONFIGS["micro"]

DEFAULT_CHECKPOINT = "sam_ms_micro.ckpt"  # proposed file name under weights/
TRAIN_KIND = "mixed"  # nuclei and cells


# Object-size curriculum: (object scale of the synthetic images, share of the steps, peak
# learning rate). From random weights SAM first learns to make every logit negative: with
# the small objects of natural-scale images (2 % of the frame each) that empty-mask plateau
# held for 300+ steps in every setting tried (learning rates, loss weights, frozen or
# trained encoder, even ideal image features). With few big objects (scale 4) the masks
# separate within ~60 steps, and smaller objects can then be learned from there.
CURRICULUM: tuple[tuple[float | tuple[float, float], float, float], ...] = (
    (4.0, 0.12, 1e-3),
    (2.0, 0.18, 6e-4),
    ((0.8, 2.5), 0.70, 4e-4),
)
PE_SCALE = 3.0  # std of the prompt encoder's random Fourier matrix (Meta's default: 1)


def build_default_model(seed: int = 0, **overrides):
    """A randomly initialised model of :data:`DEFAULT_CONFIG` (seeded)."""
    import mindspore as ms

    from ..build_sam import _build_sam

    ms.set_seed(seed)
    return _build_sam(**{**DEFAULT_CONFIG, **overrides})


def init_for_training(model, seed: int = 0, pe_scale: float = PE_SCALE):
    """Starting values that let the prompt reach the mask sooner (same architecture).

    - The prompt encoder's random Fourier matrix (a stored buffer, part of the checkpoint)
      is drawn with std ``pe_scale``: sharper position codes at a 16x16 token grid.
    - In every decoder attention the key projection starts equal to the query projection,
      so a query first attends to keys at positions like its own (measured: point-to-mask
      logit separation appears where it did not with independent random projections).
    """
    import mindspore as ms
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    g = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    g.set_data(ms.Tensor((rng.standard_normal(g.shape) * pe_scale).astype(np.float32)))
    for _, cell in model.mask_decoder.transformer.cells_and_names():
        if hasattr(cell, "q_proj") and hasattr(cell, "k_proj"):
            cell.k_proj.weight.set_data(ms.Tensor(cell.q_proj.weight.asnumpy().copy()))
    return model


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
    **config,
):
    """Train the default model from scratch on synthetic data and save it to ``out``.

    The run goes through the stages of :data:`CURRICULUM` (each its own warm-up and cosine
    decay; the model carries over, the optimizer state restarts); the checkpoint is saved
    atomically at the end of every stage, with a ``.json`` log of all stages beside it.

    Args:
        out: checkpoint path (``.ckpt``).
        steps: batches over all stages (each makes 1 + correction_rounds updates).
        seed: seeds the weights, the batch order and the prompts.
        n_train: synthetic training images per stage (seeds of the training range).
        n_val: held-out validation images at natural scale (validation seed range).
        kind: ``nuclei``, ``cells`` or ``mixed``.
        minutes: stop (and save) after this much wall time, if given.
        curriculum: (scale, share of steps, peak lr) stages.
        config: :class:`TrainConfig` fields to override in every stage.

    Returns:
        The :class:`TrainResult` of each stage run.
    """

    from ..runtime import configure
    from ..utils.io import write_json
    from .synthetic import SyntheticDataset
    from .trainer import SamTrainer, TrainConfig

    configure()
    # No graph kernel fusion here: on MindSpore 2.10 CPU it is 25-35 % faster but computes
    # the prompt encoder and the two-way transformer wrongly (errors of order 1, measured
    # against op-by-op execution), which had kept every earlier run on the empty-mask plateau.
    model = init_for_training(build_default_model(seed), seed)
    val = SyntheticDataset(n_val, kind, "val")
    deadline = None if minutes is None else time.monotonic() + 60 * minutes

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    results, stages = [], []
    for k, (scale, share, lr) in enumerate(curriculum):
        n = max(1, round(steps * share))
        settings = dict(
            steps=n,
            lr=lr,
            warmup_steps=min(50, n // 10 + 1),
            weight_decay=0.05,
            batch_images=4,
            objects_per_image=8,
            correction_rounds=1,
            train_encoder=True,
            val_every=0 if k + 1 < len(curriculum) else max(1, n // 4),
            val_at_start=False,
            seed=seed + k,
        )
        settings.update(config)
        # Images are rendered lazily (0.1-0.5 s each): enough for variety, few enough to
        # be reused (with random flips and turns) within a stage.
        n_images = min(n_train, max(64, n * settings["batch_images"] // 3))
        train = SyntheticDataset(n_images, kind, 10_000 * k, scale=scale)
        if log is not None:
            log(f"stage {k + 1}/{len(curriculum)}: object scale {scale}, {n} steps, lr {lr:g}")
        trainer = SamTrainer(
            model, train, val, TrainConfig(**settings), out=out, cancel=out_of_time, log=log
        )
        result = trainer.run()
        results.append(result)
        stages.append(
            {
                "scale": scale,
                "config": asdict(trainer.config),
                "steps_done": result.steps_done,
                "validation": result.validation,
                "history": result.history,
            }
        )
        write_json(
            Path(out).with_suffix(".json"),
            {"model_config": DEFAULT_CONFIG, "seed": seed, "stages": stages},
            overwrite=True,
        )
        if result.cancelled:
            break
    return results


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
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--objects-per-image", type=int, default=8)
    args = parser.parse_args(argv)
    results = train_default(
        args.out,
        args.steps,
        args.seed,
        args.n_train,
        kind=args.kind,
        minutes=args.minutes,
        batch_images=args.batch_images,
        objects_per_image=args.objects_per_image,
    )
    return 0 if results and results[0].steps_done else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CURRICULUM",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CONFIG",
    "build_default_model",
    "init_for_training",
    "main",
    "train_default",
]
