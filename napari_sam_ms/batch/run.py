"""The batch driver of ``napari-sam-ms segment`` and :func:`segment_batch`.

The inputs are expanded (:mod:`.inputs`), the place to run them is chosen
(:mod:`.cluster`), and each input is segmented by the same
:func:`~napari_sam_ms.segment_files.segment_one`: in this process, one after another, or in a
Dask task per input (:mod:`.tasks`) that writes its own outputs, with a progress bar over
the finished inputs. After each finished input the manifest (:mod:`.manifest`) is written,
so a rerun skips what is done; a failing input is recorded with its error and the others go
on. On a cluster, a 2D plane of more than :data:`HUGE_PLANE_PIXELS` that the command tiles is
split into tile tasks (``plane_tasks.plane_records``) and its outputs are written here;
smaller planes are one task each (tiled inside it, if at all): many ordinary images keep
every worker busy without the plan and join steps of a split plane.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..segment_files import error, failure_text, outputs_for, warn
from .inputs import Item

HUGE_PLANE_PIXELS = 4096 * 4096  # larger tiled planes are split into tile tasks on a cluster


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--scheduler`` of the segment command."""
    group = parser.add_argument_group("many images (Dask distributed; docs/batch.md)")
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="0: segment in this process; N: on a local Dask cluster of N worker processes. "
        "Default: 4 or fewer inputs in this process, more on one worker per core",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="segment on the existing Dask cluster of this scheduler (tcp://host:8786)",
    )


@dataclass
class BatchReport:
    """What a batch did: where it ran, the inputs done, skipped and failed (with their
    one-line errors), and the workers' task results (pid, model loads, seconds)."""

    mode: str
    message: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when an input failed, else 0 (the command's exit status)."""
        return 1 if self.failed else 0


def segment_batch(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **whole_image_params: Any,
) -> BatchReport:
    """Segment many images as ``napari-sam-ms segment INPUTS --out OUT`` does.

    Args:
        inputs: files, folders, glob patterns or ``@list.txt`` (:mod:`.inputs`).
        out: the output folder (label images, sidecars, the manifest).
        model, checkpoint: the model, as ``--model`` and ``--checkpoint``.
        client: a ``distributed.Client`` to run on; else ``workers``/``scheduler`` decide
            (:func:`~napari_sam_ms.batch.cluster.choose_mode`).
        overwrite: redo inputs whose outputs exist (also those the manifest says are done).
        progress: show progress bars.
        **whole_image_params: the command's other options by their Python names
            (``points_per_side=16``, ``pred_iou_thresh=0.8``, ``tile="off"``...).

    Returns:
        A :class:`BatchReport`; ``report.exit_code`` is 1 when an input failed.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    args = batch_args(inputs, out, model=model, checkpoint=checkpoint, workers=workers,
                      scheduler=scheduler, overwrite=overwrite, no_progress=not progress,
                      **whole_image_params)  # fmt: skip
    return run_batch(args, (), client=client)


def batch_args(inputs: Sequence[str | Path], out: str | Path, **options: Any) -> argparse.Namespace:
    """The command's options for these inputs: its defaults, then ``options``.

    Raises:
        TypeError: an option the command does not have.
    """
    from ..segment_files import add_segment_options

    parser = argparse.ArgumentParser(prog="segment_batch", add_help=False)
    add_segment_options(parser)
    add_cli_options(parser)
    args = parser.parse_args(["--out", str(out), "--", *map(str, inputs)])
    for name, value in options.items():
        if name in ("images", "out") or not hasattr(args, name):
            raise TypeError(f"segment_batch() got an unexpected keyword argument {name!r}")
        setattr(args, name, value)
    return args


def run_cli(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``segment`` for parsed arguments; returns the exit status (2: nothing could run)."""
    try:
        return run_batch(args, argv).exit_code
    except KeyboardInterrupt:
        error("interrupted: the inputs finished so far are recorded in the output folder's "
              "manifest; run the same command again to segment the rest")  # fmt: skip
        return 130
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        error(exc)
        return 2
    except Exception as exc:  # a cluster's own errors (its workers died...), on one line
        error(f"{type(exc).__name__}: {exc}")
        return 2


def run_batch(
    args: argparse.Namespace,
    argv: Sequence[str],
    *,
    client: Any = None,
    task: Callable[..., dict[str, Any]] | None = None,
) -> BatchReport:
    """Expand the inputs, choose where to run, segment each one, keep the manifest.

    Args:
        task: the function a worker runs per input (default
            :func:`~napari_sam_ms.batch.tasks.segment_task`; tests and benchmarks give
            others with its signature).

    Raises:
        ValueError: contradicting options, or --out is a file.
        NothingToSegment, OSError, ValueError...: before any input ran (bad inputs, model,
            unreachable scheduler).
    """
    from ..segment_files import usage_problem
    from .cluster import choose_mode, connect, dashboard_line
    from .inputs import expand_inputs
    from .manifest import Manifest, fingerprint
    from .tasks import segment_task
    from .worker import ModelSpec

    problem = usage_problem(args)
    if problem is None and args.workers is not None and args.scheduler:
        problem = "--workers and --scheduler: give one (a scheduler's cluster has its workers)"
    if problem is not None:
        raise ValueError(problem)
    items = expand_inputs(args.images)
    mode = choose_mode(len(items), args.workers, args.scheduler, client)
    print(mode.message, flush=True)
    manifest = Manifest(Path(args.out))
    if manifest.problem:
        warn(manifest.problem)
    spec = ModelSpec.from_choice(args.model, args.checkpoint, args.device, mode.cpu_threads)
    report = BatchReport(mode.kind, mode.message)
    book = _Book(args, manifest, fingerprint(spec, vars(args)), report)
    try:
        if mode.kind == "in-process":
            _in_process(args, argv, items, book)
        else:
            with connect(mode, client, args.scheduler) as dask_client:
                print(dashboard_line(dask_client, mode), flush=True)
                _on_cluster(dask_client, spec, args, argv, items, book, task or segment_task)
    finally:  # also when interrupted: every finished item is in the manifest
        book.flush()
    if report.failed and len(items) > 1:
        error(f"{len(report.failed)} of {len(items)} input(s) failed")
    return report


class _Book:
    """Each finished input: its line or error printed, the report and manifest updated."""

    def __init__(self, args: argparse.Namespace, manifest: Any, print_: str, report: BatchReport):
        self.args, self.manifest, self.print_, self.report = args, manifest, print_, report
        self.bar: Any = None

    def write(self, line: str) -> None:
        from tqdm import tqdm

        (self.bar or tqdm).write(line, file=sys.stdout)

    def settled(self, item: Item) -> bool:
        """True when ``item`` needs no run: it found nothing (failed) or is done already."""
        if item.problem is not None:
            self.fail(item.path, f"{item.path}: {item.problem}")
            return True
        if not self.args.overwrite and self.manifest.is_done(item.path, self.print_):
            self.write(f"skipped {item.path}: done in an earlier run ({self.manifest.path.name})")
            self.report.skipped.append(str(item.path))
            return True
        if not self.args.overwrite:  # outputs a stopped run wrote before its manifest did
            json_path = outputs_for(item.path, Path(self.args.out))[1]
            files = self.manifest.written_by(item.path, self.print_, json_path)
            if files:
                self.write(f"skipped {item.path}: complete outputs of the same settings found")
                self.report.skipped.append(str(item.path))
                self._record(item.path, files=files)
                return True
        return False

    def fail(self, path: Path, text: str) -> None:
        error(text)
        self.report.failed[str(path)] = text
        self._record(path, error=text)

    def flush(self) -> None:
        try:
            self.manifest.flush()
        except OSError as exc:
            warn(f"{self.manifest.path}: not written ({exc})")

    def _record(self, path: Path, **entry: Any) -> None:
        try:
            self.manifest.record(path, self.print_, **entry)
        except OSError as exc:  # a full disk: the run goes on; the next record has it all
            warn(f"{self.manifest.path}: not written ({exc})")

    def finish(self, path: Path, line: str, files: Sequence[str | Path]) -> None:
        self.write(line)
        if not files:  # skipped (--skip-existing): nothing to record
            self.report.skipped.append(str(path))
            return
        self.report.done.append(str(path))
        self._record(path, files=[Path(f) for f in files])


def _in_process(args: argparse.Namespace, argv: Sequence[str], items: list[Item], book: _Book):
    """Every input in this process, one after another (the command before batches)."""
    from tqdm import tqdm

    from ..segment_files import segment_one, start

    run = replace(start(args, argv), fingerprint=book.print_)
    written: set[Path] = set()
    book.bar = tqdm(items, desc="images", unit="image", disable=args.no_progress)
    try:
        for item in book.bar:
            if book.settled(item):
                continue
            try:
                done = segment_one(run, item.path, written)
            except Exception as exc:  # keep going with the other inputs
                book.fail(item.path, failure_text(item.path, exc))
                continue
            book.finish(item.path, done.line, done.files)
    finally:
        book.bar.close()


def _on_cluster(client: Any, spec: Any, args: argparse.Namespace, argv: Sequence[str],
                items: list[Item], book: _Book, task: Callable[..., dict]) -> None:  # fmt: skip
    """Each input as a task on the cluster (huge planes as tile tasks), results as they
    finish; tasks not finished when this is interrupted are cancelled."""
    from distributed import as_completed
    from tqdm import tqdm

    from ..cli_io import check_outputs, open_lazy
    from ..segment_files import SegmentRun, outputs_for, tiling_for
    from .tasks import describe_task, task_options
    from .worker import ModelPlugin

    client.register_plugin(ModelPlugin(spec))
    options = task_options(args)
    about = client.submit(describe_task, spec, options, tuple(argv), pure=False).result()
    run = SegmentRun(args, tuple(argv), about["device"], about["model"], about["params"],
                     None, about["model_input"], book.print_)  # fmt: skip
    written: set[Path] = set()
    futures: dict[Any, Path] = {}
    planes: list[Path] = []
    for item in items:
        if book.settled(item):
            continue
        path = item.path
        try:
            with open_lazy(path) as lazy:
                huge = lazy is not None and lazy.shape[0] * lazy.shape[1] > HUGE_PLANE_PIXELS
                if huge and tiling_for(run, lazy) is not None:
                    planes.append(path)
                    continue
            labels_path, json_path = outputs_for(path, Path(args.out))
            skip = check_outputs(args, path, labels_path, json_path, written)
        except Exception as exc:
            book.fail(path, failure_text(path, exc))
            continue
        if skip:
            book.finish(path, skip, ())
            continue
        written.add(labels_path.resolve())
        futures[client.submit(task, spec, options, tuple(argv), str(path), pure=False)] = path
    book.bar = tqdm(total=len(futures) + len(planes), desc="images", unit="image",
                    disable=args.no_progress)  # fmt: skip
    pending = dict(futures)
    try:
        for future in as_completed(list(futures), loop=client.loop):
            _collect(future, pending.pop(future), book)
        for path in planes:
            _huge_plane(client, spec, run, path, written, book)
            book.bar.update()
    except BaseException:  # Ctrl+C: record the tasks that finished meanwhile, cancel the rest
        for future in [f for f in pending if f.status == "finished"]:
            _collect(future, pending.pop(future), book)
        raise
    finally:
        book.bar.close()
        for future in pending:
            future.cancel()
    _remove_temporaries(Path(args.out), futures.values())


def _collect(future: Any, path: Path, book: _Book) -> None:
    """One finished task: its result (or why it could not run) printed and recorded."""
    try:
        got = future.result()
    except Exception as exc:  # the task could not run (its workers died)
        got = {"path": str(path), "error": failure_text(path, exc), "files": []}
    future.release()
    book.report.results.append(got)
    if got.get("error"):
        book.fail(path, got["error"])
    else:
        book.finish(path, got["line"], got["files"])
    book.bar.update()


def _huge_plane(client: Any, spec: Any, run: Any, path: Path, written: set[Path], book: _Book):
    """A 2D plane large enough to be tiled: its tiles as tasks on the cluster
    (``plane_tasks.plane_records``), its label image and sidecar written here."""
    from ..cli_io import check_outputs, labels_path_for, open_lazy
    from ..segment_files import outputs_for, tiling_for, write_tiled
    from .plane_tasks import plane_records

    out = Path(run.args.out)
    try:
        with open_lazy(path) as lazy:
            tiling = tiling_for(run, lazy)
            labels_path = labels_path_for(out, path.stem, lazy.shape)
            json_path = outputs_for(path, out)[1]
            skip = check_outputs(run.args, path, labels_path, json_path, written)
            if skip:
                book.finish(path, skip, ())
                return
            begin = time.perf_counter()
            records = plane_records(client, path, spec, dict(run.params), dict(tiling.settings))
            found = (records, time.perf_counter() - begin)
            done = write_tiled(run, path, lazy, tiling, found, (labels_path, json_path), written)
    except Exception as exc:
        book.fail(path, failure_text(path, exc))
        return
    book.finish(path, done.line, done.files)


def _remove_temporaries(out: Path, inputs: Any) -> None:
    """Temporary files a killed worker left beside the outputs of ``inputs`` (the atomic
    writers' ``.<name>.<random>.tmp``); called when no task of the run is running any more.
    The folder is listed once (it may hold many thousands of outputs)."""
    from ..segment_files import outputs_for

    names = set()
    for path in inputs:
        for output in outputs_for(Path(path), out):
            names.update((output.name, output.with_suffix(".zarr").name))
    for stale in out.glob(".*.tmp"):
        if stale.name[1:-4].rsplit(".", 1)[0] not in names:
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
