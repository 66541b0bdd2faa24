"""Calibrate the IoU head for whole-image mode.

Whole-image mode (:class:`~napari_sam_ms.SamAutomaticMaskGenerator`) prompts a grid of
points, most of them on background, between objects or on an object's edge, and keeps the
masks whose *predicted IoU* passes a threshold. Prompt training (:mod:`.trainer`) puts every
point inside an object and teaches the IoU head the IoU with *that* object, so its scores
say little about the masks a grid point on background gives.

This stage teaches the IoU head what whole-image mode asks of it, on masks from grid points:
for a point on an object, the IoU with that object (as in prompt training, so a click still
prefers the mask of the clicked object); for a point on background, the IoU with the
best-matching true object (0 when the mask matches none). The rest of the model is frozen,
so clicks and boxes give the same masks as before (only the choice among the three masks of
a click, which follows the predicted IoU, can change):

1. :func:`collect_examples` runs the model on training images with a shifted point grid and
   keeps, per prompt, the IoU token's state (the IoU head's input) and the four masks' IoU
   targets (:func:`target_ious`);
2. :func:`fit_iou_head` fits the IoU head (MindSpore, Adam, MSE) to those targets, starting
   from its trained weights, and reports the error on held-out examples before and after.

Optional, not applied to the shipped default model (docs/training.md). Command line::

    python -m napari_sam_ms.training.iou_calibration --checkpoint IN.ckpt --out OUT.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..engine import Engine
from ..utils.amg import build_point_grid
from ..utils.masks import upscale_masks

POINTS_PER_SIDE = 16  # grid points per image side when collecting examples
CHUNK = 64  # prompts decoded at once


@dataclass
class IoUExamples:
    """IoU-head inputs (N, C), their targets (N, M) (:func:`target_ious` of each of the M
    masks) and the prompts (N, 2) (x, y in original-image pixels)."""

    features: np.ndarray
    targets: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


def target_ious(
    masks: np.ndarray, labels: np.ndarray, owners: np.ndarray | None = None
) -> np.ndarray:
    """IoU targets of masks (B, M, H, W) from B prompts: for a prompt on an object (its
    id in ``owners`` (B,), > 0), the IoU with that object, as in prompt training; for a
    prompt on background (0, or no ``owners``), the highest IoU with any object of
    ``labels`` (0 for a mask that matches none, or an empty one)."""
    flat = labels.reshape(-1)
    ids, inverse = np.unique(flat, return_inverse=True)
    areas = np.bincount(inverse)
    background = flat.size and ids[0] == 0  # index 0 is the background when present
    out = np.zeros(masks.shape[:-2], np.float32)
    for idx in np.ndindex(out.shape):
        m = masks[idx].reshape(-1)
        inter = np.bincount(inverse[m], minlength=len(areas)).astype(np.float64)
        iou = inter / np.maximum(areas + np.count_nonzero(m) - inter, 1)
        owner = 0 if owners is None else int(owners[idx[0]])
        if owner > 0:
            out[idx] = iou[np.searchsorted(ids, owner)]
            continue
        if background:
            iou[0] = 0.0
        out[idx] = iou.max() if iou.size else 0.0
    return out


def collect_examples(
    model,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    points_per_side: int = POINTS_PER_SIDE,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> IoUExamples:
    """IoU-head inputs and targets from grid-point prompts on (image, labels) pairs.

    The grid is shifted by a random fraction of its spacing on each image (from ``seed``),
    so the examples cover more positions than the generator's fixed grid.

    Args:
        model: the Sam to collect from.
        samples: (image, (H, W) instance labels) pairs.
        points_per_side: grid points per image side.
        seed: fixes the grid shifts.
        progress: called with the number of images done.
    """
    from .evaluate import CompiledPredictor

    rng = np.random.default_rng(seed)
    predictor = CompiledPredictor(model)
    decoder = model.mask_decoder
    image_pe = Engine.for_model(model).decoder_graphs.dense_pe()

    @ms.jit
    def decode(features: Tensor, coords: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        hs, src = decoder.token_states(features, image_pe, sparse, dense)
        _, src, hyper_in = decoder.output_heads(hs, src, "all")
        eh, ew = features.shape[2:]
        return hs[:, 0, :], decoder.upscale_masks(src, hyper_in, eh, ew)

    features, targets, prompts = [], [], []
    for n, (image, labels) in enumerate(samples, 1):
        labels = np.asarray(labels)
        predictor.set_image(image)
        h, w = predictor.original_size
        shift = (rng.random(2) - 0.5) / points_per_side
        grid = np.clip(build_point_grid(points_per_side) + shift, 0.0, 1.0 - 1e-6)
        points = (grid * np.array([w, h])).astype(np.float32)
        coords = predictor.transform.apply_coords(points, (h, w)).astype(np.float32)
        prompts.append(points)
        for start in range(0, len(coords), CHUNK):
            chunk = coords[start : start + CHUNK, None, :]
            ones = np.ones(chunk.shape[:2], np.int32)
            state, low = decode(predictor.features, Tensor(chunk), Tensor(ones))
            up = upscale_masks(low, model.img_size, predictor.input_size, (h, w))
            masks = up > model.mask_threshold
            features.append(state.asnumpy())
            pts = points[start : start + CHUNK].astype(int)
            targets.append(target_ious(masks, labels, labels[pts[:, 1], pts[:, 0]]))
        if progress is not None:
            progress(n)
    return IoUExamples(np.concatenate(features), np.concatenate(targets), np.concatenate(prompts))


def fit_iou_head(
    model,
    examples: IoUExamples,
    steps: int = 3000,
    lr: float = 1e-3,
    batch: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
    report: Callable[[str], object] = print,
) -> dict[str, float]:
    """Fit ``model.mask_decoder.iou_prediction_head`` to the examples (in place, Adam, MSE).

    Args:
        model: the Sam whose IoU head is fitted; the rest stays as it is.
        examples: from :func:`collect_examples`.
        steps, lr, batch: optimisation steps, learning rate, examples per step.
        val_fraction: share of the examples held out.
        seed: fixes the split and the batches.
        report: receives progress lines.

    Returns:
        The held-out mean squared error before and after (``val_mse_before``,
        ``val_mse_after``) and on the training part after (``train_mse_after``).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    n_val = max(1, int(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    x = examples.features.astype(np.float32)
    y = examples.targets.astype(np.float32)
    head = model.mask_decoder.iou_prediction_head
    params = head.trainable_params()

    def loss_net(features: Tensor, target: Tensor) -> Tensor:
        # a function, not a wrapping Cell: a Cell would rename the head's parameters
        return ops.mean((head(features) - target) ** 2)

    optimizer = nn.Adam(params, learning_rate=lr)
    grad_fn = ms.value_and_grad(loss_net, None, params)

    def mse(idx: np.ndarray) -> float:
        return float(loss_net(Tensor(x[idx]), Tensor(y[idx])).asnumpy())

    before = mse(val)
    report(f"IoU head: held-out MSE {before:.4f} before fitting ({len(train)} examples)")
    for step in range(1, steps + 1):
        idx = train[rng.integers(0, len(train), batch)]
        _, grads = grad_fn(Tensor(x[idx]), Tensor(y[idx]))
        optimizer(grads)
        if step % max(1, steps // 5) == 0 or step == steps:
            report(f"  step {step}/{steps}: held-out MSE {mse(val):.4f}")
    return {
        "val_mse_before": before,
        "val_mse_after": mse(val),
        "train_mse_after": mse(train),
    }


def calibrate(
    checkpoint: str,
    out: str,
    n_images: int = 200,
    kind: str = "mixed",
    steps: int = 3000,
    seed: int = 0,
) -> dict[str, float]:
    """Collect examples on training images, fit the IoU head, save to ``out``."""
    from ..build_sam import build_sam_from_checkpoint
    from ..runtime import configure
    from ..weights.checkpoint import save_checkpoint
    from .synthetic import SyntheticDataset

    configure()
    model = build_sam_from_checkpoint(checkpoint)
    data = SyntheticDataset(n_images, kind, "train")
    start = time.perf_counter()

    def progress(done: int) -> None:
        print(f"  {done}/{n_images} images", end="\r", file=sys.stderr, flush=True)

    examples = collect_examples(
        model, ((s.image, s.labels) for s in data), seed=seed, progress=progress
    )
    print(
        f"\n{len(examples)} grid prompts from {n_images} images in "
        f"{time.perf_counter() - start:.0f} s; mean target IoU {examples.targets.mean():.3f}",
        file=sys.stderr,
    )
    figures = fit_iou_head(model, examples, steps=steps, seed=seed)
    save_checkpoint(model, out)
    print(f"wrote {out}")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: calibrate a checkpoint's IoU head for whole-image mode."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_sam_ms.training.iou_calibration",
        description="Fit a SAM checkpoint's IoU head to the masks of grid-point prompts "
        "(whole-image mode) on synthetic training images; everything else is kept.",
    )
    parser.add_argument("--checkpoint", required=True, help="model to calibrate (.ckpt)")
    parser.add_argument("--out", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--kind", default="mixed", choices=("nuclei", "cells", "mixed"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    calibrate(args.checkpoint, args.out, args.n_images, args.kind, args.steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "IoUExamples",
    "target_ious",
    "calibrate",
    "collect_examples",
    "fit_iou_head",
    "main",
]
