"""Quality with and without tiles on a large field of small nuclei (issue #25, "How it is shown").

A 4096x4096 uint16 field of nuclei 4-10 px in radius (ellipses of random size, orientation and
brightness on an uneven, noisy background, slightly blurred; ``--style dark`` gives dark
nuclei on a bright background, ``--seed`` another field) with its true labels. The embedded
``micro`` model as users get it (mirror-averaged predictor, its own whole-image settings):

- **one click / box**: ``--per-crop`` nuclei (a random choice) lying wholly inside each of
  ``--crops`` 256x256 crops of the field; each is clicked at its interior point (best-scored
  of the three masks kept) and boxed (its tight box), on (a) the whole field without tiles
  (shrunk to the model's input), (b) the whole field through tiles
  (:class:`~napari_sam_ms.tiled.TiledPredictor` with its defaults) and (c) the 256x256 crop
  alone. mIoU per way, on the same nuclei.
- **whole image**: F1@0.5 (one-to-one matching, :mod:`napari_sam_ms.training.evaluate`) on a
  ``--whole-size`` square from the field's centre, without and with tiles, and of the
  same model on each 256 crop alone against the tiled result restricted to that crop. The
  default ``--whole-size 1024`` is 36 tiles; ``--whole-size 4096``
  (the whole field, 484 tiles) over an hour: ``--state DIR`` keeps each tile's candidates
  there and a rerun with the same options resumes from them.

Target: with tiles at least as good as the same model on a 256 px crop of the field.

    python benchmarks/tiles_quality.py [--out benchmarks/tiles_quality.json] [--style dark]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CROP = 256


def make_field(side: int, seed: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 image, int32 labels) of non-overlapping nuclei 4-10 px in radius."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), np.int32)
    signal = np.zeros((side, side), np.float32)
    n = int(side * side / 900)  # ~one nucleus per 30x30 px
    next_id = 1
    for _ in range(n):
        ry, rx = rng.uniform(4, 10, 2)
        cy, cx = rng.uniform(12, side - 12, 2)
        rr, cc = ellipse(cy, cx, ry, rx, (side, side), rotation=rng.uniform(0, np.pi))
        if labels[rr, cc].any():
            continue  # no overlap: every nucleus has one true mask
        labels[rr, cc] = next_id
        signal[rr, cc] = rng.uniform(0.4, 1.0)
        next_id += 1
    coarse = rng.normal(0, 1, (side // 256 + 2, side // 256 + 2))
    background = ndi.zoom(coarse, 256, order=1)[:side, :side] * 0.05 + 0.15
    image = ndi.gaussian_filter(signal, 1.0) + background
    image = image + rng.normal(0, 0.04, image.shape)
    if style == "dark":
        image = 1.2 - image
    return np.clip(image * 40000, 0, 65535).astype(np.uint16), labels


def crops_with_nuclei(
    labels: np.ndarray, count: int, seed: int, whole_size: int
) -> list[tuple[int, int]]:
    """(y0, x0) of ``count`` 256x256 crops: random ones kept apart from the field's border,
    the first half moved inside the centred ``whole_size`` square (so that the whole-image
    crop comparison has some)."""
    rng = np.random.default_rng(seed + 1)
    side = labels.shape[0]
    crops = [tuple(int(v) for v in rng.integers(64, side - CROP - 64, 2)) for _ in range(count)]
    inner = (side - whole_size) // 2
    crops[: count // 2] = [
        (inner + 64 + k * 97 % max(1, whole_size - CROP - 128),) * 2 for k in range(count // 2)
    ]
    return crops


def nuclei_inside(labels: np.ndarray, y0: int, x0: int, limit: int) -> list[int]:
    """Ids of up to ``limit`` nuclei (a random choice) wholly inside the crop at (y0, x0)."""
    crop = labels[y0 : y0 + CROP, x0 : x0 + CROP]
    border = np.unique(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]))
    ids = [int(i) for i in np.unique(crop) if i and i not in border]
    rng = np.random.default_rng(y0 * 7919 + x0)
    return sorted(rng.permutation(ids)[:limit].tolist())


def prompt_figures(loaded, image, labels, crops, per_crop: int) -> dict:
    """mIoU of one click and of a box per way (untiled field, tiled field, crop alone)."""
    from napari_sam_ms.loader import make_predictor
    from napari_sam_ms.tiled import TiledPredictor
    from napari_sam_ms.training.evaluate import interior_point, iou

    whole = make_predictor(loaded)
    whole.set_image(_rgb(image))
    tiled = TiledPredictor(make_predictor(loaded))
    tiled.set_image(image)
    alone = make_predictor(loaded)
    scores: dict[str, dict[str, list[float]]] = {
        way: {"click": [], "box": []} for way in ("untiled", "tiled", "crop")
    }
    limits = (float(image.min()), float(image.max()))
    for y0, x0 in crops:
        alone.set_image(_rgb(image[y0 : y0 + CROP, x0 : x0 + CROP], limits))
        for i in nuclei_inside(labels, y0, x0, per_crop):
            truth = labels == i
            ys, xs = np.nonzero(truth)
            point = interior_point(truth)[None].astype(np.float64)  # (x, y)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
            offset = np.array([x0, y0], np.float64)
            local = truth[y0 : y0 + CROP, x0 : x0 + CROP]
            for way, predictor, shift, target in (
                ("untiled", whole, 0, truth),
                ("tiled", tiled, 0, truth),
                ("crop", alone, offset, local),
            ):
                scores[way]["click"].append(
                    iou(_best(predictor, point - shift, None, target.shape), target)
                )
                box_local = box - np.concatenate([shift, shift]) if way == "crop" else box
                scores[way]["box"].append(
                    iou(_best(predictor, None, box_local, target.shape), target)
                )
    return {
        way: {kind: round(float(np.mean(v)), 4) for kind, v in parts.items()}
        | {"nuclei": len(parts["click"])}
        for way, parts in scores.items()
    }


def _rgb(plane: np.ndarray, limits=None) -> np.ndarray:
    from napari_sam_ms.utils.image import to_rgb_uint8

    return to_rgb_uint8(plane, limits)


def _best(predictor, point, box, shape) -> np.ndarray:
    """The predicted mask (plane-sized), best-scored of three for a click, single for a box."""
    from napari_sam_ms.tiled import TiledPrediction

    labels = None if point is None else np.ones(len(point), np.int32)
    result = predictor.predict(point, labels, box, multimask_output=point is not None)
    if isinstance(result, TiledPrediction):  # a crop of the plane: paste the best mask
        return result.paste(np.zeros(shape, bool))
    masks, scores = result[0], result[1]
    return np.asarray(masks[int(np.argmax(scores))], bool)


def whole_image_settings(loaded, mirror: bool | None) -> tuple[dict, dict]:
    """The model's whole-image settings (``mirror`` None: its own mirror averaging) and the
    default tiles for its input, as every way of the comparison uses them."""
    from napari_sam_ms.amg_settings import model_defaults
    from napari_sam_ms.utils.tiling import default_halo, default_tile_shape

    tiling = ("model_type", "tile_shape", "halo", "zoom")
    params = {k: v for k, v in model_defaults(loaded.model_type).items() if k not in tiling}
    if mirror is not None:
        params["mirror_average"] = mirror
    model_input = int(loaded.model.image_encoder.img_size)
    halo = default_halo(model_input)
    return params, {"tile_shape": default_tile_shape(model_input, halo), "halo": halo}


def whole_image_figures(
    loaded, image, labels, crops, size: int, state: Path | None, mirror: bool | None
) -> dict:
    """F1@0.5 on a centred ``size`` square: untiled, tiled, and per 256 crop alone (with
    ``state``, the tiled run keeps each tile's candidates there and a rerun resumes; ``mirror``
    None keeps the model's own mirror averaging for the three ways)."""
    from napari_sam_ms.pipeline import make_generator
    from napari_sam_ms.training.evaluate import match_instances
    from napari_sam_ms.utils.paint import paint_labels

    side = image.shape[0]
    y0 = x0 = (side - size) // 2
    sub, truth = image[y0 : y0 + size, x0 : x0 + size], labels[y0 : y0 + size, x0 : x0 + size]
    params, tiles = whole_image_settings(loaded, mirror)
    out = {"size": size, "tiles": tiles}
    found = {}
    for name, extra in (("untiled", {}), ("tiled", tiles)):
        t = time.perf_counter()
        generator = make_generator(loaded.model, **params, **extra)
        if name == "tiled" and state is not None:  # seconds: the tiles' own, over reruns
            records, seconds = _resumable_tiled(generator, _rgb(sub), state)
        else:
            records = generator.generate(_rgb(sub))
            seconds = time.perf_counter() - t
        found[name] = paint_labels(records, sub.shape)[0]
        scores = match_instances(truth, found[name])
        out[name] = {"f1": round(scores.f1, 4), "seconds": round(seconds, 1)}
    inside = [(y - y0, x - x0) for y, x in crops if y0 <= y and y + CROP <= y0 + size
              and x0 <= x and x + CROP <= x0 + size]  # fmt: skip
    crop_f1, tiled_f1 = [], []
    limits = (float(sub.min()), float(sub.max()))
    for cy, cx in inside:
        window = (slice(cy, cy + CROP), slice(cx, cx + CROP))
        records = make_generator(loaded.model, **params).generate(_rgb(sub[window], limits))
        crop_labels = paint_labels(records, (CROP, CROP))[0]
        crop_f1.append(match_instances(truth[window], crop_labels).f1)
        tiled_f1.append(match_instances(truth[window], found["tiled"][window]).f1)
    out["crops"] = {
        "count": len(inside),
        "crop_alone_f1": round(float(np.mean(crop_f1)), 4) if crop_f1 else None,
        "tiled_f1_same_crops": round(float(np.mean(tiled_f1)), 4) if tiled_f1 else None,
    }
    return out


def _resumable_tiled(generator, rgb: np.ndarray, state: Path) -> tuple[list[dict], float]:
    """The tiled run's records as ``generator.generate(rgb)`` gives them, tile by tile through
    :func:`collect_tiles`; returns (records, summed seconds of the tiles' runs)."""
    from napari_sam_ms.utils.plane_source import PlaneSource

    source = PlaneSource(rgb)
    grid = generator.tile_grid(source.shape)
    found, seconds = collect_tiles(generator, source, grid, range(len(grid)), state)
    return generator.finish_tiled(source.shape, [found[t] for t in range(len(grid))]), seconds


def collect_tiles(generator, source, grid, indices, state: Path) -> tuple[dict, float]:
    """Candidates of tiles ``indices`` (``generator.collect_tile``), each pickled to
    ``state`` with its seconds (written whole, then renamed) and reused by a rerun; returns
    {tile: candidates} and the summed seconds of the tiles' runs."""
    import os
    import pickle

    state.mkdir(parents=True, exist_ok=True)
    found, seconds = {}, 0.0
    for t in indices:
        path = state / f"tile_{t:04d}.pkl"
        if path.exists():
            found[t], took = pickle.loads(path.read_bytes())
        else:
            start = time.perf_counter()
            found[t] = generator.collect_tile(source, grid, t)
            took = time.perf_counter() - start
            part = path.with_suffix(".part")
            part.write_bytes(pickle.dumps((found[t], took)))
            os.replace(part, path)
            print(f"tile {t + 1}/{len(grid)}: {took:.1f} s", flush=True)
        seconds += took
    return found, seconds


def state_folder(root: Path, side: int, seed: int, style: str, size: int, mirror: str) -> Path:
    """One folder of tiles per field, square and mirror choice: never another run's tiles
    (``tiles_quality_crops`` reuses the whole 4096 field's)."""
    return root / f"side{side}_seed{seed}_{style}_{size}_{mirror}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "tiles_quality.json"))
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--crops", type=int, default=6)
    parser.add_argument("--per-crop", type=int, default=12, help="nuclei prompted per crop")
    parser.add_argument("--whole-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=["bright", "dark"], default="bright")
    parser.add_argument("--skip-prompts", action="store_true", help="whole-image part only")
    parser.add_argument("--state", type=Path, help="keep the tiled run's tiles here; resume")
    parser.add_argument(
        "--mirror",
        choices=["model", "on", "off"],
        default="model",
        help="whole-image mirror averaging (every way alike): the model's default, on, off",
    )
    args = parser.parse_args()

    from napari_sam_ms.loader import load_model

    loaded = load_model("micro")
    image, labels = make_field(args.side, args.seed, args.style)
    crops = crops_with_nuclei(labels, args.crops, args.seed, args.whole_size)
    state = None
    if args.state is not None:
        state = state_folder(
            args.state, args.side, args.seed, args.style, args.whole_size, args.mirror
        )
    t = time.perf_counter()
    prompts = {}
    if not args.skip_prompts:
        prompts = prompt_figures(loaded, image, labels, crops, args.per_crop)
    print(json.dumps(prompts), flush=True)
    mirror = {"model": None, "on": True, "off": False}[args.mirror]
    whole = whole_image_figures(loaded, image, labels, crops, args.whole_size, state, mirror)
    print(json.dumps(whole), flush=True)
    result = {
        "command": " ".join(["python", "benchmarks/tiles_quality.py", *sys.argv[1:]]),
        "field": {
            "side": args.side,
            "seed": args.seed,
            "style": args.style,
            "nuclei": int(labels.max()),
            "radius_px": [4, 10],
        },  # fmt: skip
        "model": "micro (mirror-averaged predictor; its whole-image settings)",
        "whole_image_mirror_average": args.mirror,
        "prompts": prompts,
        "whole_image": whole,
        "seconds": round(time.perf_counter() - t, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
