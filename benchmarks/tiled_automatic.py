"""Whole-image (automatic) mode through tiles on a large uint16 zarr plane: peak memory and
time per tile, with the embedded ``micro`` model and its own whole-image settings.

A synthetic field of nuclei (disks of radius 4-10 px on a noisy background) is written to a
zarr store chunk by chunk, never held whole. A fresh process then opens it lazily, runs
:class:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator` with tiles (the
model's input minus twice the default halo) and paints the label image into a zarr array
chunk by chunk; it reports its peak RSS (``resource.getrusage``) and the time of every tile.

Targets (issue #25): a 16384x16384 plane under 4 GB peak RSS; time linear in the number of
tiles. On a small machine run smaller planes with the model and extrapolate the time
(``--sizes 1024 2048``), and run the full-size plane with ``--fake-model``: every tile then
proposes the drawn nuclei themselves (three nested disks each, clipped to the tile, as the
model's three masks) instead of running the model, so the run measures what grows with the
plane (reading, candidates, cut and duplicate removal, overlap filter, records, painting the
zarr label image) in minutes; the model's own memory does not grow with the plane. With
``--points-per-side 4`` (16 points per tile) the real model goes through a full-size plane
in well under an hour (``benchmarks/tiled_automatic_sparse.json``).

    python benchmarks/tiled_automatic.py --sizes 1024 2048 [--out benchmarks/tiled_automatic.json]
    python benchmarks/tiled_automatic.py --sizes 16384 --fake-model --out /tmp/fake.json
    python benchmarks/tiled_automatic.py --sizes 16384 --mirror off --points-per-side 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
TARGET_SIZE, TARGET_RSS_MB = 16384, 4096


def make_plane(path: Path, size: int, seed: int = 0, chunk: int = 1024) -> int:
    """A size x size uint16 zarr plane of nuclei, written chunk by chunk; returns the count
    and saves the nuclei (y, x, r) beside it (``<path>.npy``)."""
    import numpy as np
    import zarr

    arr = zarr.open_array(
        str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype="uint16"
    )
    rng = np.random.default_rng(seed)
    nuclei = []
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            block = rng.normal(800, 60, (h, w))
            yy, xx = np.ogrid[:h, :w]
            for _ in range(h * w // 2500):  # about one nucleus per 50x50 px
                cy, cx, r = rng.integers(12, h - 12), rng.integers(12, w - 12), rng.integers(4, 11)
                block[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 2500
                nuclei.append((y + cy, x + cx, r))
            arr[y : y + h, x : x + w] = np.clip(block, 0, 65535).astype(np.uint16)
    np.save(f"{path}.npy", np.asarray(nuclei, np.int64))
    return len(nuclei)


def fake_tiles(nuclei_path: str):
    """A stand-in for the generator's per-tile model run: the drawn nuclei meeting the tile's
    outer area, as three nested disks each (radius r - 1, r, r + 2), clipped to it."""
    import numpy as np

    from napari_sam_ms.utils.amg import MaskData, batched_mask_to_box, mask_to_rle

    nuclei = np.load(nuclei_path)

    def collect_tile(gen, source, tile, index, counter, embed):
        oy0, ox0, oy1, ox1 = tile.outer
        source.read(tile.outer)  # read the tile as the model run would
        cy, cx = nuclei[:, 0], nuclei[:, 1]
        near = nuclei[(cy + 12 > oy0) & (cy - 12 < oy1) & (cx + 12 > ox0) & (cx - 12 < ox1)]
        yy, xx = np.ogrid[oy0:oy1, ox0:ox1]
        rles, boxes, scores = [], [], []
        for k, (y, x, r) in enumerate(near):
            for dr, score in ((-1, 0.8), (0, 0.9), (2, 0.6)):
                m = (yy - y) ** 2 + (xx - x) ** 2 <= (r + dr) ** 2
                if m.any():
                    rles += mask_to_rle(m[None], compact=True)
                    boxes.append(batched_mask_to_box(m) + np.array([ox0, oy0, ox0, oy0]))
                    scores.append(score + 0.001 * ((k + index) % 7))
        for _ in range(-(-len(gen.point_grids[0]) // gen.points_per_batch)):
            counter.step()
        n = len(rles)
        return MaskData(
            iou_preds=np.asarray(scores, np.float32),
            points=np.zeros((n, 2)),
            stability_score=np.full(n, 0.9, np.float32),
            boxes=np.asarray(boxes, np.int64).reshape(n, 4),
            rles=rles,
            crop_boxes=np.tile(np.asarray([ox0, oy0, ox1, oy1], np.int64), (n, 1)),
            tile_ids=np.full(n, index, np.int64),
        )

    return collect_tile


def run_once(
    plane: str, labels: str, mirror: bool | None, fake: bool = False, points: int | None = None
) -> dict:
    """Segment the plane in this process (meant to be a fresh one) and measure it
    (``points``: points per side of each tile's grid; None: the model's own)."""
    import resource

    import zarr

    from napari_sam_ms.amg_tiles import paint_labels
    from napari_sam_ms.loader import load_model
    from napari_sam_ms.pipeline import make_generator
    from napari_sam_ms.utils.plane_source import PlaneSource
    from napari_sam_ms.utils.tiling import TileGrid, default_halo, default_tile_shape

    loaded = load_model("micro")
    if fake:
        from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator

        SamAutomaticMaskGenerator._collect_tile = fake_tiles(f"{plane}.npy")
    model_input = int(loaded.model.image_encoder.img_size)
    halo = default_halo(model_input)
    tile = default_tile_shape(model_input, halo)
    params = dict(loaded.whole_image_defaults)
    if mirror is not None:
        params["mirror_average"] = mirror
    if points is not None:
        params["points_per_side"] = points
    params.update(tile_shape=tile, halo=halo, zoom=1)
    gen = make_generator(loaded.model, **params)
    source = PlaneSource(zarr.open_array(plane, mode="r"))
    n_tiles = len(TileGrid(source.shape, tile, halo))
    per_tile = -(-len(gen.point_grids[0]) // gen.points_per_batch)
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        if done % per_tile == 0:
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    records = gen.generate(source, progress=progress)
    generated = time.perf_counter()

    def create(dtype):
        return zarr.open_array(
            labels, mode="w", shape=source.shape, chunks=(1024, 1024), dtype=dtype, fill_value=0
        )

    _, index, _ = paint_labels(records, source.shape, out=create)
    painted = time.perf_counter()
    tiles = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "plane": list(source.shape),
        "model": "fake (drawn nuclei)" if fake else "micro",
        "tiles": n_tiles,
        "tile_shape": list(tile),
        "halo": list(halo),
        "settings": {k: v for k, v in params.items() if k != "point_grids"},
        "objects": len(records),
        "labels": int(len(index)),
        "generate_s": round(generated - start, 2),
        "paint_s": round(painted - generated, 2),
        "first_tile_s": round(tiles[0], 3) if tiles else None,
        "median_tile_s": round(statistics.median(tiles[1:] or tiles), 3) if tiles else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--out", type=Path, default=HERE / "tiled_automatic.json")
    parser.add_argument(
        "--mirror",
        choices=["model", "on", "off"],
        default="model",
        help="mirror averaging: the model's default (on for micro), on, off",
    )
    parser.add_argument("--fake-model", action="store_true", help="drawn nuclei, no model")
    parser.add_argument(
        "--points-per-side", type=int, help="each tile's point grid (default: the model's)"
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        plane, labels, mirror, fake, points = args.worker
        mirror_flag = {"model": None, "on": True, "off": False}[mirror]
        points_n = None if points == "model" else int(points)
        print(json.dumps(run_once(plane, labels, mirror_flag, fake == "fake", points_n)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            plane = Path(tmp) / f"plane{size}.zarr"
            nuclei = make_plane(plane, size)
            labels = str(Path(tmp) / f"l{size}.zarr")
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                str(plane),
                labels,
                args.mirror,
                "fake" if args.fake_model else "model",
                str(args.points_per_side or "model"),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["nuclei_drawn"] = nuclei
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"runs": rows, "extrapolated": extrapolate(rows)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["extrapolated"], indent=2))
    return 0


def extrapolate(rows: list[dict]) -> dict:
    """Time at 16384^2 from the largest measured plane (its mean time per tile times the
    tiles), and the peak RSS of every size (the model's footprint dominates them; what grows
    with the plane is measured at full size by ``--fake-model``)."""
    from napari_sam_ms.utils.tiling import TileGrid

    last = rows[-1]
    tiles = len(TileGrid((TARGET_SIZE, TARGET_SIZE), last["tile_shape"], last["halo"]))
    per_tile = last["generate_s"] / last["tiles"]
    return {
        "plane": [TARGET_SIZE, TARGET_SIZE],
        "tiles": tiles,
        "mean_tile_s": [round(r["generate_s"] / r["tiles"], 3) for r in rows],
        "time_s": round(per_tile * tiles, 0),
        "peak_rss_mb_measured": [r["peak_rss_mb"] for r in rows],
    }


if __name__ == "__main__":
    sys.exit(main())
