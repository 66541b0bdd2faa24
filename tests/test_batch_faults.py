"""Batch runs under faults: a failing input, a worker killed mid-run, an unreachable
scheduler, a full disk, Ctrl+C. Nothing lost, nothing done twice, no half files."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from batch_images import FAST, FAST_ARGS, make_images, output_names

from napari_sam_ms.batch.manifest import NAME as MANIFEST
from napari_sam_ms.batch.run import batch_args, run_batch
from napari_sam_ms.cli import main

pytestmark = pytest.mark.timeout(240)
# The workers unpickle this module's task functions without importing the module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _argv(inputs, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["segment", *map(str, inputs), "--out", str(out), "--model", "tiny",
            "--checkpoint", str(ckpt), *FAST_ARGS, *extra]  # fmt: skip


def _items(out: Path) -> dict[str, dict]:
    doc = json.loads((out / MANIFEST).read_text())
    return {Path(k).name: v for k, v in doc["items"].items()}


def test_failing_input_is_recorded_and_the_others_are_done(tmp_path, tiny_ckpt, capsys):
    images = make_images(tmp_path / "in", 2)
    corrupt = tmp_path / "in" / "img5.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(40))  # a TIFF header and nothing else
    out = tmp_path / "out"
    assert main(_argv([tmp_path / "in"], out, tiny_ckpt, "--workers", "0")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "img5.tif" in err[0] and "1 of 3 input(s) failed" in err[1]
    items = _items(out)
    assert items["img5.tif"]["status"] == "failed" and "img5.tif" in items["img5.tif"]["error"]
    assert items["img0.tif"]["status"] == items["img1.png"]["status"] == "done"
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images), MANIFEST])


def dying_task(spec, options, argv, path):
    """``segment_task``, except that the first worker to get ``img1`` leaves a half-written
    output behind and dies (once: a marker file remembers it)."""
    from napari_sam_ms.batch.tasks import segment_task

    out = Path(options["out"])
    marker = out.parent / "killed"
    if Path(path).stem == "img1" and not marker.exists():
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        (out / ".img1_labels.tif.half.tmp").write_bytes(b"II*\x00half")
        os._exit(1)
    return segment_task(spec, options, argv, path)


def test_worker_killed_mid_run(tmp_path, tiny_ckpt, capsys):
    images = make_images(tmp_path / "in", 4)
    out = tmp_path / "out"
    args = batch_args([tmp_path / "in"], out, model="tiny", checkpoint=str(tiny_ckpt),
                      workers=2, no_progress=True, **FAST)  # fmt: skip
    report = run_batch(args, (), task=dying_task)
    killed = int((tmp_path / "killed").read_text())
    assert report.mode == "local" and report.exit_code == 0, report.failed
    assert sorted(report.done) == sorted(map(str, images))  # each once
    assert len(report.results) == 4 and killed not in {r["pid"] for r in report.results}
    # every output present once, complete; nothing half-written or temporary left
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images), MANIFEST])
    for p in images:
        side = json.loads((out / f"{p.stem}_labels.json").read_text())
        assert side["labels"]["file"] == f"{p.stem}_labels.tif"
    assert {v["status"] for v in _items(out).values()} == {"done"}
    assert capsys.readouterr().out.count("wrote") == 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_a_clear_error_within_10_s(tmp_path, tiny_ckpt, capsys):
    make_images(tmp_path / "in", 1)
    address = f"tcp://127.0.0.1:{_closed_port()}"
    begin = time.monotonic()
    code = main(_argv([tmp_path / "in"], tmp_path / "out", tiny_ckpt, "--scheduler", address))
    elapsed = time.monotonic() - begin
    assert code == 2 and elapsed < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the Dask scheduler at {address}" in err[0]
    assert "dask scheduler" in err[0]


def test_full_disk_fails_the_item_and_leaves_no_half_file(tmp_path, tiny_ckpt, capsys, monkeypatch):
    """The sidecar of img1 hits a full disk halfway: img1 fails with nothing of it left
    (its label image, written first, is removed too); img0 is done."""
    import napari_sam_ms.utils.io as io

    images = make_images(tmp_path / "in", 2)
    real_dump = io.json.dump

    def dump(obj, fh, *args, **kwargs):
        if ".img1_labels.json." in fh.name:
            fh.write('{"napari_sam_ms_version": ')  # half of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, fh, *args, **kwargs)

    monkeypatch.setattr(io.json, "dump", dump)
    out = tmp_path / "out"
    assert main(_argv([tmp_path / "in"], out, tiny_ckpt, "--workers", "0")) == 1
    err = capsys.readouterr().err
    assert "img1.png" in err and "No space left on device" in err
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images[:1]), MANIFEST])
    assert _items(out)["img1.png"]["status"] == "failed"
    monkeypatch.undo()  # space again: the rerun does img1 only
    assert main(_argv([tmp_path / "in"], out, tiny_ckpt, "--workers", "0")) == 0
    assert capsys.readouterr().out.count("wrote") == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images), MANIFEST])


def test_interrupt_keeps_finished_items_and_a_rerun_does_the_rest(
    tmp_path, tiny_ckpt, capsys, monkeypatch
):
    import napari_sam_ms.segment_files as segment_files

    images = make_images(tmp_path / "in", 4)
    real = segment_files.segment_one
    calls = []

    def interrupted(run, path, written):
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(run, path, written)

    monkeypatch.setattr(segment_files, "segment_one", interrupted)
    out = tmp_path / "out"
    assert main(_argv([tmp_path / "in"], out, tiny_ckpt, "--workers", "0")) == 130
    assert "interrupted" in capsys.readouterr().err
    items = _items(out)  # a valid manifest of the two finished inputs
    assert sorted(items) == ["img0.tif", "img1.png"]
    assert {v["status"] for v in items.values()} == {"done"}
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images[:2]), MANIFEST])
    monkeypatch.undo()
    assert main(_argv([tmp_path / "in"], out, tiny_ckpt, "--workers", "0")) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("done in an earlier run") == 2 and rerun.count("wrote") == 2
    assert "img2_labels.tif" in rerun and "img3_labels.tif" in rerun
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_names(images), MANIFEST])
