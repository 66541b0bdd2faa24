"""Benchmark napari-sam-ms against the reference implementations on this machine, in one run.

Both sides run a model's geometry (``--models``: vit_b by default; vit_t is MobileSAM's
TinyViT, whose reference is MobileSAM's own code) with the same random weights, each task in
a fresh process (so peak memory is per task). The reference needs torch + torchvision +
segment-anything (+ timm and mobilesam-mirror for vit_t; no MindSpore): create it once with
``benchmarks/setup_reference_env.sh``.

    python benchmarks/bench.py --reference-python .venv-ref/bin/python
    python benchmarks/bench.py --reference-python .venv-ref/bin/python --models vit_t \
        --tasks encoder,click --out benchmarks/results_vit_t.json

Prints a table of times and ratios (ours / reference) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import AMG_MANY_MIN_MASKS

HERE = Path(__file__).resolve().parent
MODELS = ("vit_b", "vit_t")
TASKS = {
    "encoder": "image embedding, 1024x768 RGB (median)",
    "click": "one point -> full-res masks, predict() (median)",
    "amg_default": "whole image, default settings, 1024x768",
    "amg_many": "whole image, thresholds set so hundreds of masks survive",
    "cache_hit": "embedding back for an image seen before (ours only)",
}
MAKE_CKPT = """
import sys, torch
if sys.argv[2] == "vit_t":
    from mobile_sam import sam_model_registry
else:
    from segment_anything import sam_model_registry
torch.manual_seed(0)
torch.save(sam_model_registry[sys.argv[2]]().state_dict(), sys.argv[1])
"""


def run_worker(
    python: str, worker: str, task: str, ckpt: Path, repeats: int, model: str = "vit_b"
) -> dict:
    out = HERE / ".cache" / f"{worker}_{model}_{task}.json"
    out.unlink(missing_ok=True)
    cmd = [python, str(HERE / worker), task, str(ckpt), str(out), str(repeats), model]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", required=True, help="python of the reference env")
    parser.add_argument("--python", default=sys.executable, help="python with napari-sam-ms")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    parser.add_argument(
        "--models", default="vit_b", help=f"comma-separated subset of {','.join(MODELS)}"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)
    # the workers run in this folder: a relative interpreter path is the caller's
    for name in ("reference_python", "python"):
        if os.sep in getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))

    (HERE / ".cache").mkdir(exist_ok=True)
    rows = {}
    for model in args.models.split(","):
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; choose from {MODELS}")
        ckpt = HERE / ".cache" / f"sam_{model}_random.pth"
        if not ckpt.exists():
            tmp = ckpt.with_suffix(".partial")
            subprocess.run([args.reference_python, "-c", MAKE_CKPT, str(tmp), model], check=True)
            os.replace(tmp, ckpt)
        for task in args.tasks.split(","):
            ref = (
                {}
                if task == "cache_hit"
                else run_worker(
                    args.reference_python, "_reference_worker.py", task, ckpt, args.repeats, model
                )
            )
            ours = run_worker(args.python, "_ours_worker.py", task, ckpt, args.repeats, model)
            row = task if model == "vit_b" else f"{model}:{task}"
            rows[row] = {"reference": ref, "ours": ours}
            print_row(row, ref, ours)

    report = {
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "tasks": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(rows)
    print(f"\nJSON: {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _t(r: dict) -> float | None:
    return r.get("median_s") if r and "error" not in r else None


def print_row(task: str, ref: dict, ours: dict) -> None:
    for side, r in (("reference", ref), ("ours", ours)):
        if r.get("error"):
            print(f"[{task}] {side} failed: {r['error']}", file=sys.stderr)
    counts = [r["n_masks"] for r in (ref, ours) if "n_masks" in r]
    if len(counts) == 2 and counts[0] != counts[1]:
        print(
            f"[{task}] mask counts differ: reference {counts[0]}, ours {counts[1]}", file=sys.stderr
        )
    if task == "amg_many" and counts and min(counts) < AMG_MANY_MIN_MASKS:
        print(
            f"[{task}] only {min(counts)} masks survive (wanted >= {AMG_MANY_MIN_MASKS}): "
            "adjust AMG_MANY in benchmarks/_common.py for this checkpoint",
            file=sys.stderr,
        )


def print_table(rows: dict) -> None:
    head = (
        f"{'task':<14} {'reference s':>12} {'ours s':>9} {'ratio':>7} {'ref MB':>8} "
        f"{'ours MB':>8} {'mem ratio':>9}  masks (ref/ours)"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for task, r in rows.items():
        ref, ours = r["reference"], r["ours"]
        tr, to = _t(ref), _t(ours)
        ratio = f"{to / tr:7.2f}" if tr and to else "      -"
        mr, mo = ref.get("peak_rss_mb"), ours.get("peak_rss_mb")
        mratio = f"{mo / mr:9.2f}" if mr and mo else "        -"
        masks = f"{ref.get('n_masks', '-')}/{ours.get('n_masks', '-')}"
        print(
            f"{task:<14} {tr if tr else float('nan'):12.3f} {to if to else float('nan'):9.3f} "
            f"{ratio} {mr or float('nan'):8.0f} {mo or float('nan'):8.0f} {mratio}  {masks}"
        )


if __name__ == "__main__":
    sys.exit(main())
