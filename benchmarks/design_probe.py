"""Time-boxed probe of the embedded default model's candidate designs (issue 24, item 3).

Trains each design from scratch for the same CPU-time budget on the same ``wide`` synthetic
images, and measures held-out one-click and box mIoU on a fixed ``wide`` validation set at
fixed CPU-time intervals (learning curves). Writes ``probe.json``, ``probe.md`` and
``probe.png`` into ``--out`` (default ``docs/probe``). The real probe (about 45 CPU minutes
per design, 2-3 hours of wall time on 2 cores), one process per design (a process keeps
every graph it compiled: three designs in one process ran out of memory)::

    for d in micro micro_t8_hq micro_t8; do
        python benchmarks/design_probe.py --cpu-minutes 45 --eval-every 7.5 --designs $d
    done

A smoke test: ``--cpu-minutes 2 --eval-every 1 --n-train 8 --n-val 1 --out /tmp/probe``.

Budget: the process CPU time (``time.process_time``: all threads of this process; 2 CPU
minutes per wall minute when MindSpore keeps both cores busy) of training steps only; the
steps that compile a graph (the first of a (re)started design, the first of each new prompt
kind) are logged as compile time and not charged; validation is not charged. Learning rate:
warm-up, then constant (a CPU budget has no step count for a cosine schedule to end at).
Same seeds for every design.

Resumable per design: ``<work>/<design>/`` holds the model checkpoint, the optimizer state
and ``state.json`` (steps, CPU seconds, curve), all written atomically after every
validation. A design already finished is skipped; a killed run continues from its last
validation (same step count and learning rate; the batch order is reseeded from the step).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _probe_report import write_report  # noqa: E402

DEFAULT_DESIGNS = ("micro", "micro_t8_hq", "micro_t8")
# Designs trained op by op: their compiled training step needs more than 16 GB (micro_t's
# 64x64 decoder grid; op by op 8.7 GB, about 27 CPU s a step against micro's 3).
OP_BY_OP = frozenset({"micro_t", "micro_t_hq"})


def probe_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every design shares (stored with the results; a resumed run must match)."""
    return dict(
        cpu_minutes=args.cpu_minutes,
        eval_every=args.eval_every,
        n_train=args.n_train,
        n_val=args.n_val,
        batch_images=args.batch_images,
        objects_per_image=args.objects_per_image,
        correction_rounds=args.correction_rounds,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        kind="wide",
    )


def train_config(settings: dict[str, Any], jit: bool = True):
    """The trainer settings of a probe run: constant learning rate after warm-up."""
    from napari_sam_ms.training.trainer import TrainConfig

    return TrainConfig(
        jit=jit,
        steps=10**9,  # never reached: the CPU budget ends the run
        lr=settings["lr"],
        min_lr_ratio=1.0,
        warmup_steps=settings["warmup_steps"],
        weight_decay=0.05,
        batch_images=settings["batch_images"],
        objects_per_image=settings["objects_per_image"],
        correction_rounds=settings["correction_rounds"],
        train_encoder=True,
        val_at_start=False,
        seed=settings["seed"],
    )


def _graph_count(trainer) -> int:
    """Training graphs made so far (a step that adds one compiles it: its time is not
    charged; a new prompt kind or correction round makes a new graph)."""
    return len(trainer.steps.steps) + len(trainer.steps.grads)


def _atomic_save_params(cell, path: Path) -> None:
    """``mindspore.save_checkpoint`` to a temporary file in the same folder, then rename."""
    import mindspore as ms

    fd, tmp = tempfile.mkstemp(suffix=".ckpt", dir=path.parent)
    os.close(fd)
    try:
        ms.save_checkpoint(cell, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class DesignRun:
    """One design's training under the probe's budget, resumable from ``folder``."""

    def __init__(self, design: str, folder: Path, settings: dict[str, Any], train, val) -> None:
        self.design, self.folder, self.settings = design, folder, settings
        self.train, self.val = train, val
        self.state_path = folder / "state.json"
        self.model_path = folder / "model.ckpt"
        self.optim_path = folder / "optimizer.ckpt"

    def load_state(self) -> dict[str, Any]:
        """The saved state, or a fresh one; refuses a state made with other settings."""
        import json

        if not self.state_path.exists():
            return dict(
                design=self.design,
                settings=self.settings,
                step=0,
                cpu_seconds=0.0,
                compile_cpu_seconds=0.0,
                curve=[],
                done=False,
            )
        state = json.loads(self.state_path.read_text())
        if state["settings"] != self.settings:
            raise ValueError(
                f"{self.state_path} was made with other settings ({state['settings']}); "
                "use another --work folder or the same options"
            )
        return state

    def run(self, log=print) -> dict[str, Any]:
        """Train until the budget is spent, validating every ``eval_every`` CPU minutes."""
        from napari_sam_ms.build_sam import build_sam_from_checkpoint
        from napari_sam_ms.training.designs import build_design
        from napari_sam_ms.training.trainer import SamTrainer
        from napari_sam_ms.utils.io import write_json

        state = self.load_state()
        if state["done"]:
            log(f"{self.design}: finished before, skipped")
            return state
        self.folder.mkdir(parents=True, exist_ok=True)
        s = self.settings
        resumed = state["step"] > 0 and self.model_path.exists()
        if resumed:
            model = build_sam_from_checkpoint(self.model_path)
        else:
            model = build_design(self.design, s["seed"])
            state.update(step=0, cpu_seconds=0.0, curve=[])
        state["params"] = sum(int(np.prod(p.shape)) for p in model.get_parameters())
        state["op_by_op"] = self.design in OP_BY_OP
        config = train_config(s, jit=not state["op_by_op"])
        trainer = SamTrainer(model, self.train, self.val, config, log=None)
        if resumed and self.optim_path.exists():
            import mindspore as ms

            ms.load_param_into_net(trainer.optimizer, ms.load_checkpoint(str(self.optim_path)))
        trainer.rng = np.random.default_rng([s["seed"], state["step"]])
        log(
            f"{self.design}: {state['params']} parameters, step {state['step']}, "
            f"{state['cpu_seconds'] / 60:.1f} of {s['cpu_minutes']} CPU minutes used"
        )
        if not state["curve"]:
            self._validate(trainer, state, log)
            self._save(trainer, state, write_json)
        budget = 60.0 * s["cpu_minutes"]
        first = True
        while state["cpu_seconds"] < budget:
            done_evals = len(state["curve"]) - 1
            stop = min(budget, 60.0 * s["eval_every"] * (done_evals + 1))
            model.set_train(True)
            while state["cpu_seconds"] < stop:
                graphs = _graph_count(trainer)
                t0 = time.process_time()
                trainer.train_step(state["step"])
                spent = time.process_time() - t0
                state["step"] += 1
                if first or _graph_count(trainer) > graphs:  # compiled a graph: not charged
                    state["compile_cpu_seconds"] += spent
                    first = False
                else:
                    state["cpu_seconds"] += spent
            model.set_train(False)
            self._validate(trainer, state, log)
            self._save(trainer, state, write_json)
        state["done"] = True
        write_json(self.state_path, state, overwrite=True)
        return state

    def _validate(self, trainer, state: dict[str, Any], log) -> None:
        t0 = time.perf_counter()
        figures = trainer.validate()
        trainer.model.set_train(False)
        point = {
            "step": state["step"],
            "cpu_minutes": round(state["cpu_seconds"] / 60, 3),
            "point_miou": figures["point_miou"],
            "box_miou": figures["box_miou"],
            "n_objects": figures["n_objects"],
        }
        state["curve"].append(point)
        log(
            f"{self.design}: step {point['step']}, {point['cpu_minutes']:.2f} CPU min: "
            f"one click {point['point_miou']:.3f}, box {point['box_miou']:.3f} "
            f"({point['n_objects']} objects; validation {time.perf_counter() - t0:.0f} s)"
        )

    def _save(self, trainer, state: dict[str, Any], write_json) -> None:
        """Model, optimizer state, then the state that points at them (all atomic)."""
        trainer.save(self.model_path)
        _atomic_save_params(trainer.optimizer, self.optim_path)
        write_json(self.state_path, state, overwrite=True)


def finished_elsewhere(work: Path, settings: dict[str, Any], designs: list[str]) -> dict:
    """States of other designs in ``work`` made with the same settings (earlier runs of this
    probe, e.g. one process per design so that no design's graphs stay in memory for the
    next), so that the report shows every design."""
    import json

    found = {}
    for path in sorted(work.glob("*/state.json")):
        state = json.loads(path.read_text())
        if state.get("settings") == settings and state["design"] not in designs:
            found[state["design"]] = state
    return found


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--designs", nargs="+", default=list(DEFAULT_DESIGNS))
    p.add_argument("--cpu-minutes", type=float, default=45.0, help="training budget per design")
    p.add_argument("--eval-every", type=float, default=7.5, help="CPU minutes between validations")
    p.add_argument("--n-train", type=int, default=600, help="wide training images (shared)")
    p.add_argument("--n-val", type=int, default=6, help="wide validation images (fixed)")
    p.add_argument("--batch-images", type=int, default=2)
    p.add_argument("--objects-per-image", type=int, default=4)
    p.add_argument("--correction-rounds", type=int, default=1)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/probe", help="folder of probe.json/.md/.png")
    p.add_argument("--work", default=None, help="checkpoints and state (default <out>/runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from napari_sam_ms.runtime import configure
    from napari_sam_ms.training.synthetic import SyntheticDataset

    configure()
    settings = probe_settings(args)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "runs"
    train = SyntheticDataset(args.n_train, "wide", "train")
    val = SyntheticDataset(args.n_val, "wide", "val")
    results = finished_elsewhere(work, settings, args.designs)
    for design in args.designs:
        run = DesignRun(design, work / design, settings, train, val)
        results[design] = run.run()
        write_report(out, settings, results)  # after every design: a partial report
    print(f"wrote {out / 'probe.json'}, {out / 'probe.md'}, {out / 'probe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
