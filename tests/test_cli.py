"""``napari-sam-ms segment`` / ``convert`` and the label assembly they share with the widget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from batch_images import FAST_ARGS
from PIL import Image

from napari_sam_ms.cli import main
from napari_sam_ms.utils.labels import label_dtype, masks_to_labels

H, W = 48, 64
FAST = FAST_ARGS  # few points, no filters: fast, and the tiny model labels something


# ----------------------------------------------------------------- masks_to_labels
def box_mask(y0: int, y1: int, x0: int, x1: int, shape=(10, 12)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_labels_largest_first_smaller_wins():
    big = box_mask(0, 10, 0, 12)  # 120 px
    mid = box_mask(2, 8, 2, 8)  # 36 px, inside big
    small = box_mask(4, 6, 4, 6)  # 4 px, inside mid
    labels, index = masks_to_labels([small, big, mid], return_index=True)
    assert labels.dtype == np.uint16
    assert list(index) == [1, 2, 0]  # label 1 = big, 2 = mid, 3 = small
    assert labels[0, 0] == 1 and labels[2, 2] == 2 and labels[5, 5] == 3
    assert set(np.unique(labels)) == {1, 2, 3}


def test_labels_from_records_use_area_and_compact_ids():
    big = box_mask(0, 5, 0, 5)
    covered = box_mask(0, 2, 0, 2)
    cover = box_mask(0, 2, 0, 2)
    records = [
        {"segmentation": big, "area": 25},
        {"segmentation": covered, "area": 4},
        {"segmentation": cover, "area": 4},  # same area, later: painted last, wins
        {"segmentation": box_mask(8, 10, 8, 12), "area": 8},
    ]
    labels, index = masks_to_labels(records, return_index=True)
    assert list(np.unique(labels)) == [0, 1, 2, 3]  # ids stay 1..N without gaps
    assert list(index) == [0, 3, 2]  # record 1 was fully covered and got no id
    assert labels[0, 0] == 3 and labels[3, 3] == 1 and labels[9, 9] == 2


def test_labels_edge_cases():
    empty = masks_to_labels([], shape=(4, 5))
    assert empty.shape == (4, 5) and empty.dtype == np.uint16 and not empty.any()
    stack = np.stack([box_mask(0, 2, 0, 2), box_mask(5, 9, 5, 9)])
    assert masks_to_labels(stack).max() == 2
    with pytest.raises(ValueError, match="shape"):
        masks_to_labels([])
    with pytest.raises(ValueError, match="expected"):
        masks_to_labels([box_mask(0, 1, 0, 1)], shape=(3, 3))
    with pytest.raises(ValueError, match="binary_mask"):
        masks_to_labels([{"segmentation": {"size": [2, 2], "counts": [4]}}])
    assert label_dtype(65535) == np.uint16 and label_dtype(65536) == np.uint32


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[10:30, 10:40] = (250, 30, 30)
    Image.fromarray(rgb).save(folder / "cells.png")
    gray16 = (rng.random((H, W)) * 4000).astype(np.uint16)
    gray16[20:40, 30:60] += 20000
    tifffile.imwrite(folder / "nuclei.tif", gray16)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return {
        "png": folder / "cells.png",
        "tif": folder / "nuclei.tif",
        "broken": folder / "broken.png",
        "missing": folder / "missing.png",
    }


def run_segment(paths, out: Path, ckpt: Path, *extra: str) -> int:
    args = ["segment", *map(str, paths), "--out", str(out), "--model", "tiny"]
    return main([*args, "--checkpoint", str(ckpt), *FAST, *extra])


def check_outputs(image: Path, out: Path, ckpt: Path) -> dict:
    labels_path = out / f"{image.stem}_labels.tif"
    labels = tifffile.imread(labels_path)
    assert labels.shape == (H, W) and labels.dtype == np.uint16
    sidecar = json.loads((out / f"{image.stem}_labels.json").read_text())
    n = sidecar["labels"]["count"]
    assert n > 0
    assert sorted(set(np.unique(labels)) - {0}) == list(range(1, n + 1))
    objects = sidecar["objects"]
    assert [o["label"] for o in objects] == list(range(1, n + 1))
    areas = [o["area"] for o in objects]
    assert areas == sorted(areas, reverse=True)  # largest first
    for o in objects:
        assert o["visible_area"] == int((labels == o["label"]).sum())
        assert len(o["point_coords"]) == 1 and len(o["bbox"]) == 4
    params = sidecar["parameters"]
    assert params["points_per_side"] == 4 and params["pred_iou_thresh"] == 0.0
    assert params["box_nms_thresh"] == 0.7 and params["crop_overlap_ratio"] == 512 / 1500
    assert sidecar["model"]["type"] == "tiny"
    assert sidecar["model"]["checkpoint"] == str(ckpt.resolve())
    assert len(sidecar["model"]["checkpoint_sha256"]) == 64
    assert sidecar["input"]["path"] == str(image.resolve())
    return sidecar


def test_segment_writes_labels_and_sidecar(images, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    assert run_segment([images["png"], images["tif"]], out, tiny_ckpt) == 0
    check_outputs(images["png"], out, tiny_ckpt)
    side = check_outputs(images["tif"], out, tiny_ckpt)
    assert side["input"]["dtype"] == "uint16"
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in out.iterdir()) == [
        "cells_labels.json",
        "cells_labels.tif",
        "napari-sam-ms-manifest.json",  # what is done, for a rerun (napari_sam_ms.batch)
        "nuclei_labels.json",
        "nuclei_labels.tif",
    ]  # no temporary files left behind


def test_bad_inputs_are_reported_and_skipped(images, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    paths = [images["missing"], images["broken"], images["png"], tmp_path]
    assert run_segment(paths, out, tiny_ckpt) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4  # one line per failure plus the summary
    assert "missing.png" in err[0] and "no such file" in err[0]
    assert "broken.png" in err[1] and "not a readable image" in err[1]
    assert "is a directory" in err[2]
    assert "3 of 4 input(s) failed" in err[3]
    check_outputs(images["png"], out, tiny_ckpt)
    assert not (out / "missing_labels.tif").exists() and not (out / "broken_labels.tif").exists()


def test_no_overwrite_without_flag(images, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    assert run_segment([images["png"]], out, tiny_ckpt) == 0
    labels_path = out / "cells_labels.tif"
    labels_path.write_bytes(b"sentinel")  # a file the user has and must keep
    assert run_segment([images["png"]], out, tiny_ckpt) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    assert labels_path.read_bytes() == b"sentinel"
    assert run_segment([images["png"]], out, tiny_ckpt, "--skip-existing") == 0
    assert labels_path.read_bytes() == b"sentinel"
    assert run_segment([images["png"]], out, tiny_ckpt, "--overwrite") == 0
    check_outputs(images["png"], out, tiny_ckpt)


def test_same_stem_twice_is_not_overwritten(images, tmp_path, tiny_ckpt, capsys):
    other = tmp_path / "b"
    other.mkdir()
    copy = other / "cells.png"
    copy.write_bytes(images["png"].read_bytes())
    out = tmp_path / "out"
    assert run_segment([images["png"], copy], out, tiny_ckpt, "--overwrite") == 1
    assert "earlier input" in capsys.readouterr().err


def test_parameters_reach_the_generator(images, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    args = ["--pred-iou-thresh", "1.5", "--min_mask_region_area", "5"]  # nothing passes 1.5
    assert run_segment([images["png"]], out, tiny_ckpt, *args) == 0
    side = json.loads((out / "cells_labels.json").read_text())
    assert side["parameters"]["pred_iou_thresh"] == 1.5
    assert side["parameters"]["min_mask_region_area"] == 5
    assert side["labels"]["count"] == 0 and side["objects"] == []
    assert not tifffile.imread(out / "cells_labels.tif").any()


def test_usage_and_model_errors(tmp_path, capsys):
    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["segment", "x.png"]) == 2  # --out missing
    capsys.readouterr()
    code = main(["segment", "x.png", "--out", str(tmp_path), "--checkpoint", "nope.ckpt"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt" in err[0]
    assert main(["segment", "x.png", "--out", str(tmp_path), "--model", "vit_x"]) == 2
    assert "unknown model type" in capsys.readouterr().err


def test_convert_delegates(tiny_pth, tmp_path, capsys):
    from napari_sam_ms.build_sam import build_sam_from_checkpoint

    out = tmp_path / "tiny.ckpt"
    assert main(["convert", "--torch_path", str(tiny_pth), "--out", str(out)]) == 0
    assert build_sam_from_checkpoint(out).config["encoder_embed_dim"] == 32
    capsys.readouterr()
    assert main(["convert", "--torch_path", str(tmp_path / "none.pth")]) == 1
    assert "none.pth" in capsys.readouterr().err


def test_module_runs_as_a_command(images, tmp_path):
    """``python -m napari_sam_ms.cli`` with random tiny weights (warns), in a new process."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "napari_sam_ms.cli", "segment", str(images["png"])]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--model", "tiny", *FAST],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "random weights" in proc.stderr
    assert "wrote" in proc.stdout
    side = json.loads((out / "cells_labels.json").read_text())
    assert side["model"]["random_weights"] is True and side["model"]["checkpoint"] is None


def test_embedded_model_runs_with_its_own_filters(images, tmp_path):
    """The embedded micro model keeps almost nothing with Meta's filters; run from the
    registry it gets those chosen for it, unless an option says otherwise."""
    from napari_sam_ms.pipeline import AMG_DEFAULTS
    from napari_sam_ms.weights import whole_image_settings

    own = whole_image_settings("micro")
    assert own["pred_iou_thresh"] != AMG_DEFAULTS["pred_iou_thresh"]
    fast = ["--points-per-side", "4"]
    base = ["segment", str(images["png"]), "--model", "micro", *fast]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    side = json.loads((tmp_path / "a" / "cells_labels.json").read_text())
    for name, value in own.items():
        assert side["parameters"][name] == pytest.approx(value), name
    assert side["parameters"]["crop_nms_thresh"] == AMG_DEFAULTS["crop_nms_thresh"]
    assert main([*base, "--out", str(tmp_path / "b"), "--pred-iou-thresh", "0.97"]) == 0
    side = json.loads((tmp_path / "b" / "cells_labels.json").read_text())
    assert side["parameters"]["pred_iou_thresh"] == 0.97
    assert side["parameters"]["box_nms_thresh"] == pytest.approx(own["box_nms_thresh"])
    # it averages over mirror images unless told not to; official models never by default
    assert side["parameters"]["mirror_average"] is True
    assert main([*base, "--out", str(tmp_path / "c"), "--no-mirror-average"]) == 0
    side = json.loads((tmp_path / "c" / "cells_labels.json").read_text())
    assert side["parameters"]["mirror_average"] is False


# ------------------------------------------------------------------------- stacks
def stack_image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """uint16 planes with a different bright rectangle in each."""
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 3000).astype(np.uint16)
    for k, index in enumerate(np.ndindex(*shape[:-2])):
        data[index][8 + 4 * k : 30 + 4 * k, 10:40] += 30000
    return data


def check_stack(out: Path, stem: str, shape: tuple[int, ...], ids: str) -> dict:
    labels = tifffile.imread(out / f"{stem}_labels.tif")
    assert labels.shape == shape and labels.dtype == np.uint16
    side = json.loads((out / f"{stem}_labels.json").read_text())
    lead = shape[:-2]
    assert side["labels"]["shape"] == list(shape) and side["labels"]["ids"] == ids
    assert side["labels"]["slices"] == int(np.prod(lead)) and "objects" not in side
    slices = side["slices"]
    assert [s["index"] for s in slices] == [list(i) for i in np.ndindex(*lead)]
    assert sum(s["count"] for s in slices) == side["labels"]["count"] > 0
    first = 1
    for s in slices:
        plane = labels[tuple(s["index"])]
        got = [o["label"] for o in s["objects"]]
        start = first if ids == "stack" else 1
        assert got == list(range(start, start + s["count"]))
        assert sorted(set(np.unique(plane)) - {0}) == got
        for o in s["objects"]:
            assert o["visible_area"] == int((plane == o["label"]).sum())
        first += s["count"]
    if ids == "stack":  # unique across the stack: 1..N once each
        assert sorted(set(np.unique(labels)) - {0}) == list(range(1, side["labels"]["count"] + 1))
    return side


def test_stack_is_segmented_slice_by_slice(tmp_path, tiny_ckpt, capsys):
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, stack_image((3, 64, 64)), photometric="minisblack")
    out = tmp_path / "out"
    assert run_segment([path], out, tiny_ckpt) == 0
    side = check_stack(out, "zstack", (3, 64, 64), ids="stack")
    assert side["labels"]["mode"] == "per-slice"
    assert "stack's min..max" in side["input"]["conversion"]
    assert all(s["seconds"] >= 0 and s["masks_found"] >= s["count"] for s in side["slices"])
    captured = capsys.readouterr()
    assert captured.err == "" and "in 3 slices" in captured.out
    # ids restarting in every slice, asked for explicitly
    again = tmp_path / "again"
    assert run_segment([path], again, tiny_ckpt, "--per-slice", "--ids", "per-slice") == 0
    per_slice = check_stack(again, "zstack", (3, 64, 64), ids="per-slice")
    assert [s["count"] for s in per_slice["slices"]] == [s["count"] for s in side["slices"]]
    stacked = tifffile.imread(out / "zstack_labels.tif")
    restarted = tifffile.imread(again / "zstack_labels.tif")
    np.testing.assert_array_equal(stacked > 0, restarted > 0)  # same masks, other ids


def test_nd_and_rgb_stacks(tmp_path, tiny_ckpt):
    """Every plane of the leading axes; a last axis of 3 is colour, not a stack axis."""
    nd = tmp_path / "tz.tif"
    tifffile.imwrite(nd, stack_image((2, 2, 48, 40)))
    rgb = tmp_path / "rgbz.tif"
    planes = stack_image((2, 48, 40)) // 256
    tifffile.imwrite(rgb, np.stack([planes] * 3, axis=-1).astype(np.uint8))
    out = tmp_path / "out"
    assert run_segment([nd, rgb], out, tiny_ckpt) == 0
    check_stack(out, "tz", (2, 2, 48, 40), ids="stack")
    side = check_stack(out, "rgbz", (2, 48, 40), ids="stack")
    assert side["input"]["shape"] == [2, 48, 40, 3]


def test_two_dimensional_images_keep_their_sidecar(images, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    assert run_segment([images["png"]], out, tiny_ckpt, "--ids", "per-slice") == 0
    side = check_outputs(images["png"], out, tiny_ckpt)  # (H, W, 3): one RGB image
    assert "slices" not in side and "ids" not in side["labels"]
    assert "image's min..max" in side["input"]["conversion"]


def test_stack_options_in_help(capsys):
    assert main(["segment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--per-slice" in text and "--ids {stack,per-slice}" in text
    assert "every 2D plane on its own (the default for stacks)" in text
    assert "(Y, X, 3) is one RGB image" in text


# ------------------------------------------------------------------- quiet logs
def bad_offset_tiff(path: Path) -> Path:
    """A TIFF header pointing past the end of the file: tifffile logs
    ``<tifffile.TiffPages @100000> invalid offset to first page`` and returns nothing."""
    path.write_bytes(b"II*\x00" + (100000).to_bytes(4, "little") + bytes(64))
    return path


def truncated_tiff(path: Path) -> Path:
    full = path.with_name("full.tif")
    tifffile.imwrite(full, stack_image((64, 64)))
    path.write_bytes(full.read_bytes()[:3000])
    return path


@pytest.mark.parametrize("make", [bad_offset_tiff, truncated_tiff])
def test_damaged_tiff_is_one_line(make, tmp_path, tiny_ckpt, capsys, caplog):
    bad = make(tmp_path / "bad.tif")
    assert run_segment([bad], tmp_path / "out", tiny_ckpt) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"napari-sam-ms: error: {bad}: cannot read TIFF (")
    assert "tifffile" not in err.lower()
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_damaged_tiff_in_a_fresh_process(tmp_path, tiny_ckpt):
    """As a user runs it: nothing but the project's one line reaches stderr."""
    bad = bad_offset_tiff(tmp_path / "bad.tif")
    cmd = [sys.executable, "-m", "napari_sam_ms.cli", "segment", str(bad), "--out"]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "out"), "--model", "tiny", "--checkpoint", str(tiny_ckpt), *FAST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"napari-sam-ms: error: {bad}: cannot read TIFF (invalid offset to first page 100000)\n"
    )


# ------------------------------------------------------------------------ tiles
DISKS = [(96, 96), (150, 40), (200, 210), (150, 120)]  # (150, 120): on a tile corner


def _big_tiff(tmp_path: Path) -> Path:
    """A 2D uint16 TIFF of 300x260 px: more than 1.5x the tiny model's 128 px input."""
    yy, xx = np.mgrid[:300, :260]
    plane = (1000 + 200 * np.sin(xx / 7.0)).astype(np.uint16)
    for cy, cx in DISKS:
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 30000
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, plane, tile=(64, 64))
    return path


def test_large_plane_is_tiled_automatically(tmp_path, tiny_ckpt, capsys):
    path = _big_tiff(tmp_path)
    out = tmp_path / "out"
    assert run_segment([path], out, tiny_ckpt) == 0
    line = capsys.readouterr().out
    assert "12 tiles of 96x96 px, halo 16, zoom 1 (--tile auto) over the 300x260 plane" in line
    labels = tifffile.imread(out / "big_labels.tif")
    side = json.loads((out / "big_labels.json").read_text())
    assert labels.shape == (300, 260)
    assert side["parameters"]["tile_shape"] == [96, 96] and side["parameters"]["halo"] == [16, 16]
    n = side["labels"]["count"]  # random weights: masks may all touch tile edges (cut)
    assert sorted(set(np.unique(labels)) - {0}) == list(range(1, n + 1))
    assert side["labels"]["masks_found"] >= n
    for o in side["objects"]:
        assert o["visible_area"] == int((labels == o["label"]).sum())
    assert side["input"]["value_range"] == [float(tifffile.imread(path).min()), 30000.0]


def test_large_png_and_stack_slices_are_tiled_too(tmp_path, tiny_ckpt, capsys, monkeypatch):
    """Inputs read whole (a PNG) and a stack's slices go through tiles as large TIFF planes
    do, at their own resolution. The tiles' candidates come from ground-truth disks
    (test_amg_tiles.FakeTiles), so every disk is one whole object on every plane."""
    from PIL import Image
    from test_amg_tiles import FakeTiles, _use

    plane = tifffile.imread(_big_tiff(tmp_path))
    png = tmp_path / "big.png"
    Image.fromarray((plane // 256).astype(np.uint8)).save(png)
    stack = tmp_path / "bigz.tif"
    tifffile.imwrite(stack, np.stack([plane, plane]), photometric="minisblack")
    out = tmp_path / "out"
    _use(monkeypatch, FakeTiles(DISKS, r=10))
    assert run_segment([png, stack], out, tiny_ckpt) == 0
    printed = capsys.readouterr().out
    assert printed.count("12 tiles of 96x96 px, halo 16, zoom 1 (--tile auto)") == 2
    labels = tifffile.imread(out / "big_labels.tif")
    side = json.loads((out / "big_labels.json").read_text())
    assert side["parameters"]["tile_shape"] == [96, 96] and side["parameters"]["halo"] == [16, 16]
    side = check_stack(out, "bigz", (2, 300, 260), ids="stack")
    assert side["parameters"]["tile_shape"] == [96, 96]
    stacked = tifffile.imread(out / "bigz_labels.tif")
    assert [s["count"] for s in side["slices"]] == [len(DISKS)] * 2
    for planes in (labels[None], stacked):
        for z, labelled in enumerate(planes):
            for cy, cx in DISKS:  # each disk whole (317 px), once
                assert labelled[cy, cx] > 0 and (labelled == labelled[cy, cx]).sum() == 317, z
    assert labels.max() == len(DISKS) and stacked.max() == 2 * len(DISKS)
    assert run_segment([png], tmp_path / "off", tiny_ckpt, "--tile", "off") == 0
    shrunk = json.loads((tmp_path / "off" / "big_labels.json").read_text())["parameters"]
    assert "tile_shape" not in shrunk


def test_tile_options_and_zarr_output(tmp_path, tiny_ckpt, capsys, monkeypatch):
    """--tile off / HxW / --halo, a zarr input and a zarr label image; the tiles' candidates
    come from ground-truth disks (test_amg_tiles.FakeTiles), so the labels are exact."""
    import zarr
    from test_amg_tiles import FakeTiles, _use

    from napari_sam_ms import cli_io

    path = _big_tiff(tmp_path)
    assert run_segment([path], tmp_path / "off", tiny_ckpt, "--tile", "off") == 0
    assert "tiles" not in capsys.readouterr().out
    assert tifffile.imread(tmp_path / "off" / "big_labels.tif").shape == (300, 260)
    monkeypatch.setattr(cli_io, "ZARR_PIXELS", 100 * 100)  # this plane counts as huge
    store = tmp_path / "big.zarr"
    arr = zarr.open_array(str(store), mode="w", shape=(300, 260), chunks=(64, 64), dtype="u2")
    arr[:] = tifffile.imread(path)
    out = tmp_path / "z"
    args = ["--tile", "150x120", "--halo", "20"]
    _use(monkeypatch, FakeTiles(DISKS, r=10))
    assert run_segment([store], out, tiny_ckpt, *args) == 0
    assert "6 tiles of 150x120 px, halo 20, zoom 1 (--tile)" in capsys.readouterr().out
    labels = zarr.open_array(str(out / "big_labels.zarr"), mode="r")[:]
    side = json.loads((out / "big_labels.json").read_text())
    assert side["labels"]["file"] == "big_labels.zarr" and side["input"]["sha256"] is None
    assert labels.max() == side["labels"]["count"] == len(DISKS)
    for k, (cy, cx) in enumerate(DISKS):  # ids by decreasing area; equal areas: input order
        assert labels[cy, cx] > 0 and (labels == labels[cy, cx]).sum() == 317, k
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    assert run_segment([store], out, tiny_ckpt, *args) == 0  # done: the manifest skips it
    assert "done in an earlier run" in capsys.readouterr().out
    (out / "napari-sam-ms-manifest.json").unlink()  # not recorded as done: a file it keeps
    assert run_segment([store], out, tiny_ckpt, *args) == 1  # exists: not overwritten
    assert "exists" in capsys.readouterr().err
    assert run_segment([store], out, tiny_ckpt, *args, "--overwrite") == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert main(["segment", str(path), "--out", str(out), "--tile", "nope"]) == 2


def test_dark_on_bright_input_is_inverted_unless_told(tmp_path, tiny_ckpt, capsys):
    """A bright-field-like input (dark nuclei on white) is segmented inverted, as the
    Automatic widget does, and the user is told; --no-invert keeps it; fluorescence is kept."""
    rng = np.random.default_rng(5)
    bright = np.full((H, W, 3), 235, np.uint8) - rng.integers(0, 12, (H, W, 1), dtype=np.uint8)
    for cy, cx in ((15, 20), (40, 60), (25, 70)):
        yy, xx = np.ogrid[:H, :W]
        bright[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = (70, 40, 110)
    Image.fromarray(bright).save(tmp_path / "he.png")
    dark = 255 - bright
    Image.fromarray(dark).save(tmp_path / "fluo.png")
    assert run_segment([tmp_path / "he.png", tmp_path / "fluo.png"], tmp_path / "a", tiny_ckpt) == 0
    err = capsys.readouterr().err
    assert "he.png looks dark on bright" in err and "fluo.png looks" not in err
    out = tmp_path / "a"
    side = {n: json.loads((out / f"{n}_labels.json").read_text()) for n in ("he", "fluo")}
    assert side["he"]["parameters"]["invert"] is True
    assert side["fluo"]["parameters"]["invert"] is False
    assert run_segment([tmp_path / "he.png"], tmp_path / "b", tiny_ckpt, "--no-invert") == 0
    assert "looks dark on bright" not in capsys.readouterr().err
    kept = json.loads((tmp_path / "b" / "he_labels.json").read_text())
    assert kept["parameters"]["invert"] is False
