"""Batch runs (napari_sam_ms.batch): inputs, where they run, same results on Dask, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from batch_images import FAST, FAST_ARGS, make_images, output_names

from napari_sam_ms import segment_batch
from napari_sam_ms.batch.cluster import IN_PROCESS_MAX, choose_mode, cores
from napari_sam_ms.batch.inputs import NothingToSegment, expand_inputs
from napari_sam_ms.batch.manifest import NAME as MANIFEST
from napari_sam_ms.cli import main

pytestmark = pytest.mark.timeout(240)


# ------------------------------------------------------------------------ inputs
def test_inputs_from_folders_globs_and_lists(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    images = make_images(folder, 3)  # img0.tif img1.png img2.tif
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.tif").write_bytes(b"x")
    (folder / "sub").mkdir()
    make_images(folder / "sub", 1, start=7)  # not searched
    (folder / "plate.zarr").mkdir()  # a zarr store inside a folder is one image
    got = expand_inputs([folder])
    assert [i.path for i in got] == [*images, folder / "plate.zarr"]  # sorted, not sub/
    assert all(i.problem is None for i in got)
    assert [i.path for i in expand_inputs([str(folder / "*.tif")])] == [images[0], images[2]]
    listing = tmp_path / "list.txt"  # relative lines: relative to the list file
    listing.write_text(f"# my inputs\n\ndata/img1.png\n{images[2]}\ndata/sub/*.png\n")
    got = expand_inputs([f"@{listing}"])
    assert [i.path for i in got] == [images[1], images[2], folder / "sub" / "img7.png"]
    # a plain file (missing or not) is itself: the reader reports it in its turn
    monkeypatch.chdir(tmp_path)
    assert [i.path for i in expand_inputs(["nope.png", "data"])][0] == Path("nope.png")


def test_inputs_that_find_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    make_images(tmp_path / "ok", 1)
    got = expand_inputs([empty, str(tmp_path / "*.jpg"), tmp_path / "ok"])
    assert [i.problem for i in got[:2]] == [
        "is a directory with no image files in it",
        "no file matches this pattern",
    ]
    assert got[2].problem is None
    with pytest.raises(NothingToSegment, match="nothing to segment.*no image files"):
        expand_inputs([empty])
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(NothingToSegment, match="names no inputs"):
        expand_inputs([f"@{tmp_path / 'blank.txt'}"])
    with pytest.raises(OSError):
        expand_inputs([f"@{tmp_path / 'missing.txt'}"])


def test_where_a_batch_runs():
    assert choose_mode(IN_PROCESS_MAX, None, None).kind == "in-process"
    many = choose_mode(IN_PROCESS_MAX + 1, None, None)
    assert many.kind == "local" and many.workers == min(cores(), IN_PROCESS_MAX + 1)
    assert "one worker per core" in many.message
    two = choose_mode(3, 2, None)
    assert (two.kind, two.workers, two.cpu_threads) == ("local", 2, max(1, cores() // 2))
    assert "2 worker processes with" in two.message
    assert choose_mode(50, 0, None).kind == "in-process"
    assert choose_mode(2, None, "tcp://127.0.0.1:1").kind == "scheduler"
    with pytest.raises(ValueError, match="--workers"):
        choose_mode(2, -1, None)


def test_local_workers_get_their_threads_in_the_environment():
    """Dask's nanny starts workers with OMP/OpenBLAS/MKL threads at 1 and glibc's malloc
    trimming at 64 KiB, which made a worker's run a third slower than in-process; a local
    cluster's workers get as many as their MindSpore threads and Dask's trimming is not set.
    Their monitors run at the slower intervals, and this process's configuration is left as
    it was."""
    import os
    from unittest import mock

    import dask

    from napari_sam_ms.batch.cluster import LOCAL_INTERVALS, connect

    mode = choose_mode(3, 1, None)
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    with mock.patch.dict(os.environ), connect(mode) as local:  # the nanny writes here too
        seen = local.run(lambda: {n: os.environ.get(n) for n in names})
        config = local.run(lambda: {k: dask.config.get(k) for k in LOCAL_INTERVALS})
    (env,) = seen.values()
    assert list(config.values()) == [LOCAL_INTERVALS]
    assert all(dask.config.get(k) != v for k, v in LOCAL_INTERVALS.items())
    threads = str(mode.cpu_threads)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == threads
    assert env["MKL_NUM_THREADS"] == threads
    assert env["MALLOC_TRIM_THRESHOLD_"] == before  # not Dask's


def test_core_sets_give_each_worker_cores_of_its_own():
    from napari_sam_ms.batch.cluster import core_sets

    assert core_sets(2, 1, [0, 1]) == [(0,), (1,)]
    assert core_sets(2, 2, [4, 5, 6, 7]) == [(4, 5), (6, 7)]
    assert core_sets(1, 2, [3, 9]) == [(3, 9)]
    assert core_sets(3, 1, [0, 1]) is None  # they would share cores: not pinned
    assert core_sets(0, 1, [0, 1]) is None


def test_local_workers_are_pinned_to_their_own_cores():
    """Every thread of worker i (and the model's, started later) is on its own cores, also
    after its nanny restarted it; two workers never share one. Unpinned, MindSpore's waiting
    threads wander between cores."""
    import os

    from napari_sam_ms.batch.cluster import connect, core_sets

    def affinities(dask_worker):
        tasks = os.listdir("/proc/self/task")
        return dask_worker.name, {tuple(sorted(os.sched_getaffinity(int(t)))) for t in tasks}

    mode = choose_mode(5, 2, None)
    sets = core_sets(mode.workers, mode.cpu_threads)
    if sets is None:  # a machine of one core: the two workers share it, unpinned
        pytest.skip("fewer cores than two single-threaded workers: nothing to pin")
    with connect(mode) as local:
        seen = sorted(local.run(affinities).values())
        local.restart()  # the nannies start new worker processes: pinned again
        again = sorted(local.run(affinities).values())
    assert seen == again == [(i, {sets[i]}) for i in range(mode.workers)]
    assert not set(sets[0]) & set(sets[1])


# ------------------------------------------------------------- same on a cluster
@pytest.fixture(scope="module")
def client():
    """Two worker processes on this machine only."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        yield c


def _sidecar(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("created")  # when it was written
    doc.pop("seconds")  # how long it took
    for entry in doc.get("slices", []):
        entry.pop("seconds")
    return doc


def test_cluster_gives_the_same_labels_and_loads_the_model_once(
    tmp_path, tiny_ckpt, client, capsys
):
    images = make_images(tmp_path / "in", 4)
    common = dict(model="tiny", checkpoint=tiny_ckpt, progress=False, **FAST)
    here = segment_batch(tmp_path / "in", tmp_path / "here", workers=0, **common)
    there = segment_batch(tmp_path / "in", tmp_path / "there", client=client, **common)
    out = capsys.readouterr().out
    assert "segmenting 4 inputs in this process" in out
    assert "segmenting 4 inputs on the given Dask client" in out
    assert "dashboard: http://127.0.0.1:" in out  # bokeh is a dependency: there is one
    assert (here.mode, there.mode) == ("in-process", "client")
    assert here.exit_code == there.exit_code == 0 and not here.failed and not there.failed
    assert sorted(here.done) == sorted(there.done) == sorted(map(str, images))
    for p in images:
        a = tifffile.imread(tmp_path / "here" / f"{p.stem}_labels.tif")
        b = tifffile.imread(tmp_path / "there" / f"{p.stem}_labels.tif")
        assert a.max() > 0 and np.array_equal(a, b), p.name
        side_a = _sidecar(tmp_path / "here" / f"{p.stem}_labels.json")
        side_b = _sidecar(tmp_path / "there" / f"{p.stem}_labels.json")
        assert side_a == side_b, p.name
    names = sorted(p.name for p in (tmp_path / "there").iterdir())
    assert names == sorted([*output_names(images), MANIFEST])
    # every task ran on a worker that had loaded the model once (by the plugin) and kept it
    pids = [r["pid"] for r in there.results]
    assert len(set(pids)) <= 2 and len(pids) == 4
    assert all(r["loads"] == 1 for r in there.results)
    again = segment_batch(tmp_path / "in", tmp_path / "again", client=client, **common)
    assert all(r["loads"] == 1 for r in again.results)  # a second batch: still loaded once
    per_worker = client.run(_loads_here, tiny_ckpt)
    assert sorted(per_worker.values()) == [1, 1]
    # a given client's workers run MindSpore on their own threads (1 each), not every core
    assert sorted(client.run(_mindspore_threads).values()) == [1, 1]


def _mindspore_threads() -> int | None:
    from napari_sam_ms import runtime

    return runtime.cpu_threads()


def _loads_here(ckpt: Path) -> int:
    from napari_sam_ms.batch.worker import ModelSpec, load_count

    return load_count(ModelSpec.from_choice("tiny", ckpt))


def test_a_huge_plane_goes_to_tile_tasks_and_is_written_here(
    tmp_path, tiny_ckpt, client, monkeypatch
):
    """On a cluster, a plane the command would tile and larger than HUGE_PLANE_PIXELS goes to
    ``plane_tasks.plane_records`` (tile tasks) and its outputs are written by the driver as
    the in-process tiled path writes them; a smaller one is a task of its own."""
    from napari_sam_ms.batch import plane_tasks, run

    yy, xx = np.mgrid[:300, :260]
    plane = (1000 + 200 * np.sin(xx / 7.0)).astype(np.uint16)
    for cy, cx in [(96, 96), (150, 40), (200, 210)]:
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 30000
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", plane, tile=(64, 64))
    calls = []
    real = plane_tasks.plane_records

    def spy(dask_client, path, spec, params, tiling_settings, progress=None):
        calls.append((dask_client, Path(path).name, dict(tiling_settings)))
        return real(dask_client, path, spec, params, tiling_settings, progress)

    monkeypatch.setattr(plane_tasks, "plane_records", spy)
    common = dict(model="tiny", checkpoint=tiny_ckpt, progress=False, **FAST)
    here = segment_batch(tmp_path / "in", tmp_path / "here", workers=0, **common)
    whole = segment_batch(tmp_path / "in", tmp_path / "whole", client=client, **common)
    assert whole.exit_code == 0 and len(whole.results) == 1 and not calls  # one task
    monkeypatch.setattr(run, "HUGE_PLANE_PIXELS", 100 * 100)
    there = segment_batch(tmp_path / "in", tmp_path / "there", client=client, **common)
    assert here.exit_code == there.exit_code == 0 and there.results == []  # no per-image task
    assert calls == [(client, "big.tif", {"tile_shape": (96, 96), "halo": (16, 16), "zoom": 1})]
    a = tifffile.imread(tmp_path / "here" / "big_labels.tif")
    for other in ("whole", "there"):
        b = tifffile.imread(tmp_path / other / "big_labels.tif")
        assert a.shape == (300, 260) and np.array_equal(a, b)
        side = _sidecar(tmp_path / other / "big_labels.json")
        assert side == _sidecar(tmp_path / "here" / "big_labels.json")
        assert side["parameters"]["tile_shape"] == [96, 96]


# ---------------------------------------------------------------------- resume
def test_manifest_resumes_overwrites_and_retries(tmp_path, tiny_ckpt, capsys):
    images = make_images(tmp_path / "in", 2)
    bad = tmp_path / "in" / "img9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", "tiny"]
    argv = [*base, "--checkpoint", str(tiny_ckpt), "--workers", "0", *FAST_ARGS]
    assert main(argv) == 1  # img9 failed
    first = capsys.readouterr()
    assert "img9.png" in first.err and "not a readable image" in first.err
    manifest = json.loads((out / MANIFEST).read_text())["items"]
    status = {Path(k).name: v["status"] for k, v in manifest.items()}
    assert status == {"img0.tif": "done", "img1.png": "done", "img9.png": "failed"}
    assert "not a readable image" in manifest[str(bad.resolve())]["error"]
    outputs = manifest[str(images[0].resolve())]["outputs"]
    assert sorted(Path(o["path"]).name for o in outputs) == output_names(images[:1])

    make_images(tmp_path / "fixed", 1, start=9)  # the failed input, now readable
    bad.write_bytes((tmp_path / "fixed" / "img9.png").read_bytes())
    stamp = (out / "img0_labels.tif").stat().st_mtime_ns
    assert main(argv) == 0  # done ones skipped, the failed one retried
    second = capsys.readouterr().out
    assert second.count("done in an earlier run") == 2 and "wrote" in second
    assert "img9_labels.tif" in second and (out / "img0_labels.tif").stat().st_mtime_ns == stamp
    manifest = json.loads((out / MANIFEST).read_text())["items"]
    assert {v["status"] for v in manifest.values()} == {"done"}

    assert main([*argv, "--overwrite"]) == 0  # everything redone
    third = capsys.readouterr().out
    assert "done in an earlier run" not in third and third.count("wrote") == 3
    assert (out / "img0_labels.tif").stat().st_mtime_ns != stamp

    # other parameters: not done with them; the outputs exist, so --overwrite is needed
    assert main([*argv, "--points-per-side", "3"]) == 1
    assert capsys.readouterr().err.count("--overwrite") == 3


def test_outputs_written_before_the_manifest_are_adopted_not_redone(tmp_path, tiny_ckpt, capsys):
    """A driver stopped between items' outputs and its next manifest write (e.g. killed):
    the rerun finds their complete outputs by the sidecars, which name the run's settings,
    and records them as done without redoing them; an input changed since is not adopted."""
    images = make_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", "tiny"]
    argv = [*base, "--checkpoint", str(tiny_ckpt), "--workers", "0", *FAST_ARGS]
    assert main(argv) == 0
    capsys.readouterr()
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST}
    (out / MANIFEST).unlink()  # as if the driver died before writing it
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("complete outputs of the same settings found") == 2 and "wrote" not in text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST} == written
    manifest = json.loads((out / MANIFEST).read_text())["items"]
    assert {v["status"] for v in manifest.values()} == {"done"} and len(manifest) == 2
    assert main(argv) == 0 and capsys.readouterr().out.count("done in an earlier run") == 2

    (out / MANIFEST).unlink()
    tifffile.imwrite(images[0], np.zeros((32, 32), np.uint8))  # changed since: not adopted
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert images[0].name in err and "--overwrite" in err and images[1].name not in err


def test_cli_batch_options(tmp_path, capsys):
    assert main(["segment", "x.png", "--out", str(tmp_path), "--workers", "2",
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2  # fmt: skip
    assert "--workers and --scheduler" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "*.png"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to segment" in capsys.readouterr().err
    assert main(["segment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers N" in text and "--scheduler ADDRESS" in text and "@list.txt" in text
