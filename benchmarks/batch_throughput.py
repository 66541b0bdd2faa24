"""Batch throughput on Dask (issue #27): images per minute with the embedded ``micro`` model.

Synthetic 512x512 uint16 images of nuclei (disks and ellipses of varied size and count on an
uneven, noisy background) are written to a temporary folder, then segmented with
:func:`napari_sam_ms.segment_batch` and :data:`SETTINGS`: one task per image, shrunk to the
model's 256 px input (``--tile off``; tiled, each 512 px image would be 9 tiles of
1024 points x 4 mirror images, about 10 minutes per image on 2 busy cores) with a 16x16
point grid and no mirror averaging; the model's other whole-image defaults are kept:

- ``--workers 0`` (in this process), ``--workers 1`` and ``--workers 2`` as the command runs
  them (MindSpore threads per worker: cores // workers);
- one and two single-threaded workers, each pinned to its own core (``client=``), for the
  scaling from 1 to 2 workers (target >= 1.8x);
- Dask's overhead against in-process at the same core count: ``--workers 1`` (one process
  with every core's threads) against ``--workers 0`` (target <= 10 %);
- the reference for the scaling, measured in the same run: the machine's own scaling for
  this work without Dask, one and two single-threaded ``--workers 0`` processes started
  together, each pinned to its own core and given its share of the images.

Rates are "steady": from the manifest's finish times, leaving out each worker's first
image (the model's graphs compile on it); the wall time with start-up is reported too.

Scheduler overhead: ``--tasks`` (10,000) inputs through the same driver (expansion, output
checks, one task per input, ``as_completed``, the manifest) with the model call replaced by
a sleep of ``--sleep`` seconds (the task writes a small sidecar). Overhead per task is the
whole run's wall time per task (cluster start included) beyond ``sleep / workers``.

    python benchmarks/batch_throughput.py [--images 100] [--tasks 10000] [--out ...json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SIZE = 512
SETTINGS = {"tile": "off", "points_per_side": 16, "mirror_average": False}


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` nuclei-like uint16 TIFFs of SIZE x SIZE, each with its own count and sizes."""
    import numpy as np
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    paths = []
    for k in range(n):
        img = 600 + 200 * np.sin(xx / rng.uniform(60, 200)) * np.cos(yy / rng.uniform(60, 200))
        for _ in range(int(rng.integers(15, 60))):
            cy, cx = rng.uniform(10, SIZE - 10, 2)
            ry, rx = rng.uniform(5, 18, 2)
            img += rng.uniform(1500, 4000) * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1)
        img += rng.normal(0, 80, img.shape)
        path = folder / f"nuclei{k:04d}.tif"
        tifffile.imwrite(path, np.clip(img, 0, 65535).astype(np.uint16))
        paths.append(path)
    return paths


def finish_times(out: Path) -> list[float]:
    """The manifest's finish times of the done items (seconds, sorted)."""
    doc = json.loads((out / "napari-sam-ms-manifest.json").read_text())
    stamps = [
        datetime.datetime.fromisoformat(v["finished"]).timestamp()
        for v in doc["items"].values()
        if v["status"] == "done"
    ]
    return sorted(stamps)


def run(label: str, folder: Path | list, out: Path, workers_for_rate: int, **kwargs) -> dict:
    """One batch; wall time, and the steady rate leaving out each worker's first image."""
    from napari_sam_ms import segment_batch

    begin = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report = segment_batch(folder, out, model="micro", progress=False, **SETTINGS, **kwargs)
    wall = time.perf_counter() - begin
    stamps = finish_times(out)
    skip = max(1, workers_for_rate)
    steady = stamps[skip - 1 :]  # from the end of the first images to the last
    n_steady = len(steady) - 1
    per_min = 60.0 * n_steady / (steady[-1] - steady[0]) if n_steady > 0 else None
    row = {
        "run": label,
        "mode": report.mode,
        "images": len(stamps),
        "failed": len(report.failed),
        "wall_s": round(wall, 2),
        "images_per_min_wall": round(60.0 * len(stamps) / wall, 2),
        "images_per_min_steady": None if per_min is None else round(per_min, 2),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


@contextlib.contextmanager
def pinned_cluster(n: int):
    """The command's local cluster of ``n`` single-threaded workers, each pinned to a core
    of its own as the command's are (:func:`napari_sam_ms.batch.cluster.local_cluster`)."""
    from distributed import Client

    from napari_sam_ms.batch.cluster import core_sets, local_cluster

    if core_sets(n, 1) is None:
        raise SystemExit(f"cannot pin {n} single-threaded workers to cores of their own")
    with local_cluster(n, 1) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def plain_processes(folder: Path, tmp: Path, n: int) -> dict:
    """The machine's own scaling, without Dask: ``n`` processes started together, each pinned
    to its own core with one thread, each running ``--workers 0`` on its share of the images;
    their steady rates are summed."""
    import subprocess

    from napari_sam_ms.batch.cluster import thread_environ

    paths = sorted(str(p) for p in folder.glob("*.tif"))
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ) | thread_environ(1)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--plain",
                str(cores[i % len(cores)]),
                str(tmp / f"plain{n}_{i}"),
                *paths[i::n],
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise RuntimeError(f"a pinned process failed: {[proc.returncode for proc in procs]}")
    parts = [json.loads(text.strip().splitlines()[-1]) for text in outputs]
    row = {
        "run": f"{n} pinned single-threaded process{'es' if n > 1 else ''}, no Dask",
        "mode": "in-process",
        "images": sum(part["images"] for part in parts),
        "failed": sum(part["failed"] for part in parts),
        "wall_s": max(part["wall_s"] for part in parts),
        "images_per_min_steady": round(sum(part["images_per_min_steady"] for part in parts), 2),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _plain_child(core: str, out: str, paths: list[str]) -> None:
    """One process of :func:`plain_processes`: pinned to ``core``, prints its row."""
    os.sched_setaffinity(0, {int(core)})
    print(json.dumps(run("pinned process", paths, Path(out), 1, workers=0)))


def sleep_task(spec, options, argv, path):
    """The batch task with the model call replaced by a sleep; writes a small sidecar."""
    from napari_sam_ms.batch.tasks import result
    from napari_sam_ms.utils.io import write_json

    begin = time.perf_counter()
    time.sleep(options["bench_sleep"])
    side = Path(options["out"]) / f"{Path(path).stem}_labels.json"
    write_json(side, {"slept": options["bench_sleep"]}, overwrite=True)
    return result(path, begin, spec, line=f"slept {path}", files=[str(side)])


def scheduler_overhead(tmp: Path, n: int, sleep: float, workers: int) -> dict:
    """``n`` sleeping tasks through the batch driver on ``workers`` workers."""
    from napari_sam_ms.batch.run import batch_args, run_batch

    folder = tmp / "sleep_in"
    folder.mkdir()
    for k in range(n):
        (folder / f"s{k:05d}.png").touch()
    out = tmp / "sleep_out"
    args = batch_args([folder], out, model="micro", workers=workers, no_progress=True)
    args.bench_sleep = sleep  # reaches the task through its options
    begin = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report = run_batch(args, (), task=sleep_task)
    wall = time.perf_counter() - begin
    # From the whole run's wall time (cluster start and input listing included, so an upper
    # bound): the manifest's finish times are when the driver recorded each result, and a
    # driver behind on 10 ms tasks records a backlog at once (a span shorter than the sleeps).
    per_task = wall / n
    row = {
        "tasks": n,
        "done": len(report.done),
        "sleep_s": sleep,
        "workers": workers,
        "wall_s": round(wall, 2),
        "seconds_per_task": round(per_task, 5),
        "overhead_per_task_ms": round(1000 * (per_task - sleep / workers), 3),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per run (100)")
    parser.add_argument("--tasks", type=int, default=10_000, help="sleeping tasks (10000)")
    parser.add_argument("--sleep", type=float, default=0.01, help="seconds per sleep (0.01)")
    parser.add_argument("--out", default=str(HERE / "batch_throughput.json"))
    parser.add_argument(
        "--scaling-only", action="store_true", help="only the pinned workers and processes"
    )
    parser.add_argument("--plain", nargs="+", help=argparse.SUPPRESS)  # CORE OUT PATHS...
    opts = parser.parse_args()
    if opts.plain:
        _plain_child(opts.plain[0], opts.plain[1], opts.plain[2:])
        return
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as name:
        tmp = Path(name)
        folder = tmp / "in"
        make_images(folder, opts.images)
        rows = {}
        if not opts.scaling_only:
            rows["w0"] = run("--workers 0 (in-process)", folder, tmp / "w0", 1, workers=0)
            rows["w1"] = run("--workers 1 (LocalCluster)", folder, tmp / "w1", 1, workers=1)
            rows["w2"] = run("--workers 2 (LocalCluster)", folder, tmp / "w2", 2, workers=2)
        for n in (1, 2):
            with pinned_cluster(n) as client:
                label = f"{n} pinned single-threaded worker{'s' if n > 1 else ''}"
                rows[f"pinned{n}"] = run(label, folder, tmp / f"p{n}", n, client=client)
        for n in (1, 2):
            rows[f"plain{n}"] = plain_processes(folder, tmp, n)
        sleep_row = None
        if not opts.scaling_only:
            sleep_row = scheduler_overhead(tmp, opts.tasks, opts.sleep, 2)

    def rate(key: str) -> float:
        return rows[key]["images_per_min_steady"]

    ratios = {
        "scaling_1_to_2_single_threaded": round(rate("pinned2") / rate("pinned1"), 3),
        "scaling_target": ">= 1.8",
        "machine_scaling_without_dask": round(rate("plain2") / rate("plain1"), 3),
    }
    if sleep_row is not None:
        ratios |= {
            "dask_overhead_same_cores": round(rate("w0") / rate("w1") - 1, 4),
            "dask_overhead_target": "<= 0.10",
            "workers2_over_workers0": round(rate("w2") / rate("w0"), 3),
            "scheduler_overhead_per_task_ms": sleep_row["overhead_per_task_ms"],
        }
    result = {
        "benchmark": "batch_throughput",
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },  # fmt: skip
        "image": f"{SIZE}x{SIZE} uint16 nuclei, micro model",
        "settings": SETTINGS,
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "images_per_run": opts.images,
        "runs": list(rows.values()),
        "scheduler_overhead": sleep_row,
        "ratios": ratios,
    }
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
