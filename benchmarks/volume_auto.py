"""Volumetric automatic segmentation on synthetic volumes with ground truth (issue 26.3).

Three 12 x 160 x 160 fields of nucleus-like ellipsoids (tests/synthetic_volumes.py: sizes
5..16 px, two touching pairs, z radii of 2..5 slices) are segmented slice by slice with the
embedded ``micro`` model (its own whole-image settings, ``--points-per-side`` as given),
once; the slices' label images are then merged into 3D objects with each matching setting
of the table (napari_sam_ms.volumes.match3d), and scored by instance F1 at IoU 0.5 against
the ground truth (objects paired by linear assignment). Target of the issue: F1 >= 0.70.

    python benchmarks/volume_auto.py [--points-per-side 16] [--save per_slice.npz]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_volumes import AUTO_FIELDS, f1_at, field  # noqa: E402

from napari_sam_ms.volumes.match3d import match_slices  # noqa: E402

# (min_iou, max_gap, min_slices, min_size in voxels)
SETTINGS = list(itertools.product((0.3, 0.5), (0, 1), (1, 2, 3), (0, 200)))


def per_slice_labels(points_per_side: int, save: Path | None) -> list[np.ndarray]:
    """Each field's per-slice label images (read from ``save`` when it holds them)."""
    if save is not None and save.exists():
        data = np.load(save)
        if int(data["points_per_side"]) == points_per_side:
            return [data[f"field{i}"] for i in range(len(AUTO_FIELDS))]
    from napari_sam_ms.loader import load_model
    from napari_sam_ms.segment_volume import segment_volume

    loaded = load_model("micro")
    out = []
    for i, objects in enumerate(AUTO_FIELDS):
        volume, _ = field(objects, i)
        start = time.perf_counter()
        result = segment_volume(volume, model=loaded, points_per_side=points_per_side)
        print(f"field {i}: {time.perf_counter() - start:.1f} s, masks per slice "
              f"{list(result.masks_found)}", flush=True)  # fmt: skip
        out.append(result.per_slice)
    if save is not None:
        arrays = {f"field{i}": p for i, p in enumerate(out)}
        np.savez_compressed(save, points_per_side=points_per_side, **arrays)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--save", type=Path, default=None, help="keep per-slice labels here")
    args = parser.parse_args()
    slices = per_slice_labels(args.points_per_side, args.save)
    truths = [field(objects, i)[1] for i, objects in enumerate(AUTO_FIELDS)]
    print(f"\npoints_per_side {args.points_per_side}; {sum(int(t.max()) for t in truths)} "
          "true objects in 3 fields")  # fmt: skip
    head = "min_iou max_gap min_slices min_size |   F1   prec  recall  found  mIoU(tp)"
    print(head + "\n" + "-" * len(head))
    for min_iou, gap, thick, size in SETTINGS:
        tp = n_true = n_found = 0
        ious = []
        for per, truth in zip(slices, truths, strict=True):
            found = match_slices(per, min_iou, size, None, gap, thick).labels
            score = f1_at(truth, found)
            tp, n_true = tp + score["tp"], n_true + score["n_true"]
            n_found += score["n_found"]
            ious += [score["mean_iou"]] * score["tp"]
        f1 = 2 * tp / (n_true + n_found)
        print(f"{min_iou:7} {gap:7} {thick:10} {size:8} | {f1:5.3f}  {tp / max(1, n_found):5.3f}"
              f"  {tp / n_true:5.3f}  {n_found:5}  {np.mean(ious) if ious else 0:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
