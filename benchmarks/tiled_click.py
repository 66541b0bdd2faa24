"""Click cost against plane size through tiles (issue #25): it must not grow with the plane.

The embedded ``micro`` model through the loader's predictor (mirror-averaged, as users get
it) and :class:`~napari_sam_ms.tiled.TiledPredictor` with its defaults (256-pixel tiles
outer, halo 32, inner 192), an on-disk zarr tile cache in a temporary folder. Planes:
1024^2 and 4096^2 uint16 numpy arrays, 16384^2 uint16 zarr on disk (512^2 chunks).

Per plane, in one process after a warm-up click on a small plane (graph compilation):

- ``set_image``: wrapping the plane (contrast limits from a <= 4 M pixel sample, identity);
- ``first click``: a click in a tile never embedded (embeds and caches that one tile);
- ``later click``: the median of clicks elsewhere in the same tile;
- ``new process click``: a new TiledPredictor and cache object on the same folder, a click
  in the same tile (the tile read back from zarr, nothing embedded).

    python benchmarks/tiled_click.py [--out benchmarks/tiled_click.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SIZES = (1024, 4096, 16384)


def make_plane(side: int, folder: Path) -> tuple[object, tuple[float, float]]:
    """A uint16 plane of bright disks on noise: numpy up to 4096, else zarr on disk."""
    rng = np.random.default_rng(side)
    block = 1024 if side > 4096 else side
    yy, xx = np.mgrid[0:block, 0:block]
    if side > 4096:
        import zarr

        plane = zarr.open_array(str(folder / f"plane{side}.zarr"), mode="w",
                                shape=(side, side), chunks=(512, 512), dtype="uint16")  # fmt: skip
    else:
        plane = np.empty((side, side), np.uint16)
    for by in range(0, side, block):
        for bx in range(0, side, block):
            tile = rng.normal(1000, 50, (block, block))
            for _ in range(40):
                cy, cx, r = rng.uniform(0, block), rng.uniform(0, block), rng.uniform(4, 10)
                tile[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 3000
            plane[by : by + block, bx : bx + block] = np.clip(tile, 0, 65535).astype(np.uint16)
    centre = (side // 2 + 37.5, side // 2 + 61.5)  # (x, y) of the clicks
    return plane, centre


def measure(side: int, loaded, folder: Path, repeats: int) -> dict:
    from napari_sam_ms.embedding_cache import EmbeddingCache
    from napari_sam_ms.loader import embedding_id, make_predictor
    from napari_sam_ms.tiled import TiledPredictor

    plane, (x, y) = make_plane(side, folder)
    cache_dir = folder / f"cache{side}"

    def fresh():
        predictor = make_predictor(loaded)
        return TiledPredictor(predictor, cache=EmbeddingCache(cache_dir),
                              model_id=embedding_id(loaded, predictor))  # fmt: skip

    tp = fresh()
    t = time.perf_counter()
    tp.set_image(plane)
    set_image = time.perf_counter() - t
    t = time.perf_counter()
    res = tp.predict(np.array([[x, y]]), np.array([1]))
    first = time.perf_counter() - t
    assert tp.embedded == 1, "the first click must embed exactly one tile"
    later = []
    for i in range(repeats):
        t = time.perf_counter()
        tp.predict(np.array([[x + 3 * (i + 1), y - 2 * (i + 1)]]), np.array([1]))
        later.append(time.perf_counter() - t)
    assert tp.embedded == 1
    other = fresh()
    other.set_image(plane)
    t = time.perf_counter()
    other.predict(np.array([[x, y]]), np.array([1]))
    reread = time.perf_counter() - t
    assert other.embedded == 0, "the tile must come back from the zarr cache"
    return {
        "plane": f"{side}x{side}",
        "storage": "zarr" if side > 4096 else "numpy",
        "tiles": len(tp.grid),
        "set_image_s": round(set_image, 4),
        "first_click_s": round(first, 4),
        "later_click_s": round(statistics.median(later), 4),
        "new_process_click_s": round(reread, 4),
        "mask_pixels": int(res.masks[int(np.argmax(res.scores))].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "tiled_click.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = parser.parse_args()

    from napari_sam_ms.loader import load_model, make_predictor
    from napari_sam_ms.tiled import TiledPredictor

    loaded = load_model("micro")
    warm = TiledPredictor(make_predictor(loaded))
    warm.set_image(np.zeros((300, 300), np.uint16))
    t = time.perf_counter()
    warm.predict(np.array([[150.0, 150.0]]), np.array([1]))
    warm_up = time.perf_counter() - t
    rows = []
    with tempfile.TemporaryDirectory(prefix="tiled-click-") as tmp:
        for side in args.sizes:
            rows.append(measure(side, loaded, Path(tmp), args.repeats))
            print(rows[-1], flush=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    header = f"{'plane':>12} {'storage':>7} {'tiles':>6} {'set_image':>9} {'first':>7} " \
             f"{'later':>7} {'reread':>7}"  # fmt: skip
    print(f"\nmicro, mirror-averaged, tile {warm.tile_shape} halo {warm.halo}; "
          f"warm-up click (compilation) {warm_up:.2f} s; peak RSS {rss_mb:.0f} MB")  # fmt: skip
    print(header)
    for r in rows:
        print(f"{r['plane']:>12} {r['storage']:>7} {r['tiles']:>6} {r['set_image_s']:>9.3f} "
              f"{r['first_click_s']:>7.3f} {r['later_click_s']:>7.3f} "
              f"{r['new_process_click_s']:>7.3f}")  # fmt: skip
    result = {
        "model": "micro (mirror-averaged)",
        "tile_shape": list(warm.tile_shape),
        "halo": list(warm.halo),
        "warm_up_click_s": round(warm_up, 3),
        "peak_rss_mb": round(rss_mb),
        "python": sys.version.split()[0],
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
