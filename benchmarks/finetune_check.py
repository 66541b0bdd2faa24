"""Does fine-tuning still pay? (issue #24.6)

A synthetic style no training run drew: fluorescent nuclei with coarse, strong chromatin
texture, heavy blur and a steep gamma, all beyond the ranges of the ``wide`` training styles
(:mod:`napari_sam_ms.training.styles`: texture <= 0.45, blur <= 2, gamma <= 1.7), seen as
one acquisition sees it: one nucleus size, camera and bit depth for every image (density,
focus and background still vary). As a user of the *Fine-tune SAM* widget would, 10
objects of one image are labelled (the rest of that image left unlabelled), and the model is
fine-tuned with the widget's defaults (200 steps, learning rate 1e-4, image encoder frozen).
Held out: other images of the same style, every object. Reported: one-click and box mIoU
before and after.

    python benchmarks/finetune_check.py --checkpoint weights/sam_ms_micro.ckpt \
        --json /tmp/finetune_micro.json

Target: one-click mIoU rises by >= 0.10.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HELD_OUT_STYLE = {
    # beyond the training ranges
    "texture": 0.9,
    "grain": 3.5,
    "blur": 3.0,
    "nucleoli": 0.9,
    "gamma": 2.2,
    # one acquisition, as a user's images are: one magnification, camera and bit depth
    "radius": 9.0,
    "radius_spread": 0.2,
    "brightness_ratio": 2.0,
    "bit_depth": 12,
    "photons": 300.0,
}


def ten_objects(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``labels`` with only ``n`` of its objects kept (picked at random, renumbered 1..n)."""
    ids = np.unique(labels)[1:]
    keep = rng.choice(ids, min(n, len(ids)), replace=False)
    out = np.zeros_like(labels)
    for k, i in enumerate(sorted(keep), start=1):
        out[labels == i] = k
    return out


def show_steps(info: dict) -> None:
    """Print every 50th training step (returns None: never cancels)."""
    if info.get("event") == "step" and info["step"] % 50 == 0:
        print(f"  step {info['step']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from napari_sam_ms.training.default_model import DEFAULT_CHECKPOINT

    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(root / "weights" / DEFAULT_CHECKPOINT))
    parser.add_argument("--objects", type=int, default=10, help="objects labelled")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n-val", type=int, default=6, help="held-out images of the style")
    parser.add_argument(
        "--val-every", type=int, default=0, help="held-out figures every N steps (0: at the end)"
    )
    parser.add_argument("--train-encoder", action="store_true", help="also train the encoder")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    from napari_sam_ms.build_sam import build_sam_from_checkpoint
    from napari_sam_ms.runtime import configure
    from napari_sam_ms.training.finetune import fine_tune
    from napari_sam_ms.training.styles import StyleOverrides
    from napari_sam_ms.training.synthetic import SyntheticDataset

    configure()
    style = StyleOverrides(only=("nuclei",), fixed=HELD_OUT_STYLE)
    train = SyntheticDataset(1, "wide", "test", styles=style)[0]
    val = SyntheticDataset(args.n_val, "wide", "val", styles=style)
    labels = ten_objects(train.labels, args.objects, np.random.default_rng(0))
    model = build_sam_from_checkpoint(args.checkpoint)
    result = fine_tune(
        model,
        [train.image],
        [labels],
        val=[(s.image, s.labels) for s in val],
        steps=args.steps,
        lr=args.lr,
        val_every=args.val_every or args.steps,
        train_encoder=args.train_encoder,
        progress=show_steps,
        log=lambda line: print(" ", line, flush=True),
    )
    before, after = result.validation[0], result.validation[-1]
    rise = after["point_miou"] - before["point_miou"]
    print(
        f"{args.checkpoint}: {int(labels.max())} objects labelled on one image, {args.steps} "
        f"steps; held out {len(val)} images ({before.get('n_objects', '?')} objects)\n"
        f"  one click  {before['point_miou']:.3f} -> {after['point_miou']:.3f}  ({rise:+.3f}; "
        f"target >= +0.10)\n"
        f"  box        {before['box_miou']:.3f} -> {after['box_miou']:.3f}  "
        f"({after['box_miou'] - before['box_miou']:+.3f})"
    )
    if args.json:
        doc = {**vars(args), "style": HELD_OUT_STYLE, "before": before, "after": after}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
