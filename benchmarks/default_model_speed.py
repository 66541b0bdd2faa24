"""Speed and size of embedded-model candidates on a 1024x1024 image (issue #24's targets).

Each model runs in a fresh process, as users get it (the loader's predictor: mirror
averaging where it is the model's default) and plain (one prediction): the first embedding
(graphs compiled on an empty compile cache), the median of later embeddings of new images,
and the median click (one point, three masks at full resolution), beside the file size.

    python benchmarks/default_model_speed.py --models micro /work/longrun/run2/x.ckpt \
        --out benchmarks/default_model_speed.json

Targets: embedding <= 1 s, click <= 100 ms, file <= 40 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"embed_s": 1.0, "click_s": 0.1, "file_mb": 40.0}


def worker(model: str, mirror: bool, repeats: int) -> dict:
    """One model in this process: times of the first and later embeddings and of clicks."""
    import numpy as np

    from napari_sam_ms import runtime
    from napari_sam_ms.loader import load_model, make_predictor

    runtime.configure()
    path = Path(model)
    loaded = load_model(checkpoint=path) if path.suffix == ".ckpt" else load_model(model)
    if not mirror:
        loaded = dataclasses.replace(loaded, mirror_average=False)
    predictor = make_predictor(loaded)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8) for _ in range(repeats + 1)]
    point, label = np.array([[500.0, 480.0]]), np.array([1])
    embeds, clicks = [], []
    for image in images:
        t = time.perf_counter()
        predictor.set_image(image)
        embeds.append(time.perf_counter() - t)
        t = time.perf_counter()
        predictor.predict(point, label, multimask_output=True)
        clicks.append(time.perf_counter() - t)
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(point, label, multimask_output=True)
        clicks.append(time.perf_counter() - t)
    return {
        "first_embed_s": round(embeds[0], 3),
        "embed_s": round(statistics.median(embeds[1:]), 3),
        "first_click_s": round(clicks[0], 3),
        "click_s": round(statistics.median(clicks[1:]), 4),
        "file_mb": round(loaded_size_mb(loaded, path), 2),
    }


def loaded_size_mb(loaded, path: Path) -> float:
    """The weights file's size (the registry's file for a name)."""
    if path.suffix == ".ckpt":
        return path.stat().st_size / 1e6
    source = getattr(loaded, "checkpoint", None)
    return Path(source).stat().st_size / 1e6 if source else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["micro"], help="names or .ckpt files")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the table as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MIRROR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        model, mirror = args.worker
        print(json.dumps(worker(model, mirror == "1", args.repeats)))
        return 0
    rows = []
    for model in args.models:
        for mirror in (True, False):
            with tempfile.TemporaryDirectory() as cache:  # an empty compile cache
                env = {**os.environ, "MS_COMPILER_CACHE_PATH": cache}
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--worker",
                       model, "1" if mirror else "0"]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = {
                "model": model,
                "mirror_average": mirror,
                **json.loads(out.stdout.splitlines()[-1]),
            }
            rows.append(row)
            print(
                f"{Path(model).name:<28} mirror {'on ' if mirror else 'off'}  embedding "
                f"{row['embed_s']:.3f} s (first {row['first_embed_s']:.2f} s)  click "
                f"{1000 * row['click_s']:.0f} ms  file {row['file_mb']:.1f} MB",
                flush=True,
            )
    print(f"targets: embedding <= {TARGETS['embed_s']} s, click <= 100 ms, file <= 40 MB")
    if args.out:
        doc = {"machine": f"{os.cpu_count()} CPU cores", "targets": TARGETS, "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
