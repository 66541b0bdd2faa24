"""Where the tiled whole-image result loses to the model on a 256 px crop alone (issue #25).

``tiles_quality.py --whole-size 4096 --mirror off`` found, on its 6 crops of the 4096 field,
F1@0.5 0.873 for the tiled result against 0.896 for the model on each crop alone. This runs
only the tiles near those crops (their outer areas within 256 px of a crop; the others are
given no candidates, which changes nothing within a crop: duplicates are only compared
between tiles whose outer areas meet), the same finish as the whole run, and the model on
each crop alone, then scores each crop twice:

- as ``tiles_quality`` does (every object in the crop window, cut ones included);
- leaving out, on both sides, the objects that touch the crop's edge (true and predicted):
  a nucleus cut by the window is a sliver for the truth and for the tiled result, but the
  model on the crop alone sees only the sliver.

It also lists the false positives (area, on the crop's edge, best IoU with a true nucleus).
``--state DIR`` keeps each tile's candidates for reruns, in the folder
``tiles_quality.py --whole-size 4096 --mirror off --state DIR`` uses: after that run, this
one runs no tile.

    python benchmarks/tiles_quality_crops.py --state DIR [--out benchmarks/tiles_quality_crops.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from tiles_quality import (  # noqa: E402
    CROP,
    _rgb,
    collect_tiles,
    crops_with_nuclei,
    make_field,
    state_folder,
    whole_image_settings,
)

NEAR = 256  # px around a crop whose tiles are run
SIDE = 4096  # the field of tiles_quality --whole-size 4096 (seed 0, bright)


def _edge_ids(lab: np.ndarray) -> set[int]:
    return set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}


def _without(lab: np.ndarray, ids: set[int]) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    out = lab.copy()
    out[np.isin(out, sorted(ids))] = 0
    return relabel_sequential(out)[0]


def _false_positives(truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    from scipy.optimize import linear_sum_assignment

    from napari_sam_ms.training.evaluate import iou_matrix

    ious = iou_matrix(truth, pred)
    rows, cols = linear_sum_assignment(-ious)
    matched = set(cols[ious[rows, cols] >= 0.5])
    ids = [int(i) for i in np.unique(pred) if i]
    edge = _edge_ids(pred)
    return [
        {
            "area": int((pred == pid).sum()),
            "on_edge": pid in edge,
            "best_iou": round(float(ious[:, k].max()) if ious.shape[0] else 0.0, 2),
        }  # fmt: skip
        for k, pid in enumerate(ids)
        if k not in matched
    ]


def _scores(s) -> dict:
    return {"f1": round(s.f1, 4), "tp": s.tp, "fp": s.fp, "fn": s.fn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "tiles_quality_crops.json"))
    parser.add_argument("--state", type=Path, required=True, help="tiles' candidates, reused")
    args = parser.parse_args()

    from skimage.segmentation import relabel_sequential

    from napari_sam_ms.loader import load_model
    from napari_sam_ms.pipeline import make_generator
    from napari_sam_ms.training.evaluate import match_instances
    from napari_sam_ms.utils.paint import paint_labels
    from napari_sam_ms.utils.plane_source import PlaneSource

    loaded = load_model("micro")
    image, labels = make_field(SIDE, 0, "bright")
    crops = crops_with_nuclei(labels, 6, 0, SIDE)  # as tiles_quality --whole-size 4096
    params, tiles = whole_image_settings(loaded, mirror=False)
    generator = make_generator(loaded.model, **params, **tiles)
    source = PlaneSource(_rgb(image))
    grid = generator.tile_grid(source.shape)
    near = sorted({
        t for t, tile in enumerate(grid.tiles) for y, x in crops
        if tile.outer[0] < y + CROP + NEAR and tile.outer[2] > y - NEAR
        and tile.outer[1] < x + CROP + NEAR and tile.outer[3] > x - NEAR
    })  # fmt: skip
    state = state_folder(args.state, SIDE, 0, "bright", SIDE, "off")
    found, _ = collect_tiles(generator, source, grid, near, state)
    empty = copy.deepcopy(found[near[0]])
    empty.filter(np.zeros(len(empty["boxes"]), bool))
    records = generator.finish_tiled(source.shape, [found.get(t, empty) for t in range(len(grid))])
    tiled = paint_labels(records, image.shape)[0]
    limits = (float(image.min()), float(image.max()))
    rows = []
    for y0, x0 in crops:
        window = (slice(y0, y0 + CROP), slice(x0, x0 + CROP))
        alone_records = make_generator(loaded.model, **params).generate(_rgb(image[window], limits))
        alone = paint_labels(alone_records, (CROP, CROP))[0]
        truth = relabel_sequential(labels[window])[0]
        tiled_crop = relabel_sequential(tiled[window])[0]
        inner = _without(truth, _edge_ids(truth))
        tiled_inner = _without(tiled_crop, _edge_ids(tiled_crop))
        alone_inner = _without(alone, _edge_ids(alone))
        rows.append({
            "crop_y0_x0": [y0, x0],
            "all_objects": {"tiled": _scores(match_instances(truth, tiled_crop)),
                            "alone": _scores(match_instances(truth, alone))},
            "edge_objects_left_out": {
                "tiled": _scores(match_instances(inner, tiled_inner)),
                "alone": _scores(match_instances(inner, alone_inner)),
            },
            "false_positives": {"tiled": _false_positives(truth, tiled_crop),
                                "alone": _false_positives(truth, alone)},
        })  # fmt: skip
        print(json.dumps(rows[-1]["all_objects"]), json.dumps(rows[-1]["edge_objects_left_out"]))

    def mean(way: str, who: str) -> float:
        return round(float(np.mean([r[way][who]["f1"] for r in rows])), 4)

    def fp_count(who: str, edge: bool) -> int:
        return sum(f["on_edge"] == edge for r in rows for f in r["false_positives"][who])

    summary = {
        way: {who: mean(way, who) for who in ("tiled", "alone")}
        for way in ("all_objects", "edge_objects_left_out")
    }
    summary["false_positives"] = {
        who: {"on_crop_edge": fp_count(who, True), "inside": fp_count(who, False)}
        for who in ("tiled", "alone")
    }
    result = {
        "command": " ".join(["python", "benchmarks/tiles_quality_crops.py", *sys.argv[1:]]),
        "field": "tiles_quality's 4096 field, seed 0, bright; micro, no mirror averaging",
        "tiles_run": len(near),
        "mean_f1": summary,
        "crops": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
