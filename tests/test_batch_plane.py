"""Huge planes on Dask (napari_sam_ms.batch.plane_tasks): one task per tile on a LocalCluster
of two processes gives the records and labels of the tiled generator run in one process.

The model is the embedded micro model read from its checkpoint file (path + sha256, the
same weights in every worker): the tiny model's random weights give only empty masks, which
would not show objects on tile borders being merged.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam_ms.batch.plane_tasks import PlaneJob, plane_records
from napari_sam_ms.batch.worker import ModelMismatchError, ModelSpec, loaded_specs, worker_model
from napari_sam_ms.cli_io import open_lazy, write_labels
from napari_sam_ms.pipeline import make_generator
from napari_sam_ms.utils.plane_source import PlaneSource
from napari_sam_ms.utils.tiling import TileGrid

PARAMS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
ZARR_TILES = {"tile_shape": (192, 192), "halo": (32, 32), "zoom": 1}  # 4 x 5 tiles
TIFF_TILES = {"tile_shape": (96, 96), "halo": (16, 16), "zoom": 2}  # 4 x 5 tiles, zoomed


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    path = Path(__file__).resolve().parents[1] / "weights" / "sam_ms_micro.ckpt"
    return ModelSpec.from_choice(None, path, cpu_threads=1)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):  # fmt: skip
        c.wait_for_workers(2)
        yield c


def blob_plane(shape: tuple[int, int], tile: int, r: int) -> np.ndarray:
    """uint16 noise with bright disks centred on every inner tile border and corner."""
    rng = np.random.default_rng(0)
    plane = (rng.random(shape) * 3000).astype(np.uint16)
    ys, xs = range(tile, shape[0], tile), range(tile, shape[1], tile)
    corners = [(y, x) for y in ys for x in xs]
    on_rows = [(y, x + tile // 2) for y in ys for x in range(0, shape[1] - tile // 2, tile)]
    on_cols = [(y + tile // 2, x) for y in range(0, shape[0] - tile // 2, tile) for x in xs]
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for cy, cx in corners + on_rows + on_cols:
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 30000
    return plane


def in_process(path: Path, spec: ModelSpec, params: dict, tiling: dict) -> list[dict]:
    with open_lazy(path) as lazy:
        generator = make_generator(worker_model(spec).model, **params, **tiling)
        return generator.generate(PlaneSource(lazy))


def assert_same(got: list[dict], expected: list[dict], shape, tiling, tmp_path: Path) -> None:
    """Same records (scores to 1e-5), at least one whole across an inner tile edge, and the
    same painted labels."""
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        for key in ("bbox", "area", "crop_box", "point_coords"):
            assert np.array_equal(g[key], e[key]), key
        assert np.array_equal(g["segmentation"], e["segmentation"])
    for key in ("predicted_iou", "stability_score"):  # NaN: the stability of an empty mask
        scores = [[r[key] for r in got], [r[key] for r in expected]]
        np.testing.assert_allclose(*scores, rtol=0, atol=1e-5, equal_nan=True, err_msg=key)
    th, tw = tiling["tile_shape"]
    crosses = [
        r for r in got
        if r["bbox"][1] // th != (r["bbox"][1] + r["bbox"][3] - 1) // th
        or r["bbox"][0] // tw != (r["bbox"][0] + r["bbox"][2] - 1) // tw
    ]  # fmt: skip
    assert crosses, "no object whole across a tile edge"
    got_labels, got_rows = write_labels(tmp_path / "dask.tif", got, shape, False)
    labels, rows = write_labels(tmp_path / "one.tif", expected, shape, False)
    assert labels.max() > 0 and np.array_equal(got_labels, labels) and got_rows == rows


@pytest.fixture(scope="module")
def zarr_run(client, spec, tmp_path_factory):
    """A 700x900 zarr plane run on Dask (with progress) and in one process."""
    folder = tmp_path_factory.mktemp("zarr_plane")
    path, shape = folder / "plane.zarr", (700, 900)
    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=(128, 128), dtype=np.uint16)
    arr[:] = blob_plane(shape, ZARR_TILES["tile_shape"][0], 20)
    calls: list[tuple[int, int]] = []
    got = plane_records(client, path, spec, PARAMS, ZARR_TILES, lambda *a: calls.append(a))
    return path, shape, got, calls


def test_zarr_plane_equals_one_process(zarr_run, spec, tmp_path):
    path, shape, got, _ = zarr_run
    assert_same(got, in_process(path, spec, PARAMS, ZARR_TILES), shape, ZARR_TILES, tmp_path)


def test_progress_counts_tiles(zarr_run):
    _, shape, _, calls = zarr_run
    n = len(TileGrid(shape, ZARR_TILES["tile_shape"], ZARR_TILES["halo"]))
    assert n == 20 and calls == [(k, n) for k in range(n + 1)]


def test_tasks_carry_no_model(zarr_run, client, spec):
    """A task's arguments are a few hundred bytes; each worker process holds the model."""
    path, *_ = zarr_run
    job = PlaneJob(str(path), spec, PARAMS, ZARR_TILES)
    assert len(pickle.dumps((job, 19, (0.0, 33000.0)))) < 64 * 1024
    held = client.run(loaded_specs)
    assert len(held) == 2 and all(specs == [spec] for specs in held.values())


def test_inverted_zoomed_tiff_plane_equals_one_process(client, spec, tmp_path):
    """``invert`` and ``zoom`` reach the workers; the TIFF is read lazily, tile by tile."""
    path, shape = tmp_path / "plane.tif", (384, 480)
    plane = np.iinfo(np.uint16).max - blob_plane(shape, TIFF_TILES["tile_shape"][0], 12)
    tifffile.imwrite(path, plane, tile=(64, 64))
    params = {**PARAMS, "invert": True}
    got = plane_records(client, path, spec, params, TIFF_TILES)
    assert_same(got, in_process(path, spec, params, TIFF_TILES), shape, TIFF_TILES, tmp_path)


def test_a_different_checkpoint_is_refused(client, spec, tmp_path):
    path = tmp_path / "plane.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=(300, 300), dtype=np.uint16)
    arr[:] = blob_plane((300, 300), 192, 20)
    wrong = ModelSpec(spec.model, spec.checkpoint, "0" * 64, spec.device, spec.cpu_threads)
    with pytest.raises(ModelMismatchError, match="differs from the client's file"):
        plane_records(client, path, wrong, PARAMS, ZARR_TILES)


def test_progress_returning_false_cancels(zarr_run, client, spec):
    from napari_sam_ms.automatic_mask_generator import GenerationCancelled

    path, *_ = zarr_run
    with pytest.raises(GenerationCancelled, match="after 0 of 20 tiles"):
        plane_records(client, path, spec, PARAMS, ZARR_TILES, lambda done, total: False)


def test_a_worker_killed_mid_plane_changes_nothing(zarr_run, client, spec, tmp_path):
    """A worker process killed while the plane's tile tasks run (after the first tile came
    back): its tiles run elsewhere or on its restarted process, and the plane's records and
    labels are those of one process. Last in this module: the cluster has a new worker."""
    import os
    import signal

    path, shape, _, _ = zarr_run
    pids = sorted(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if done == 1 and not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    got = plane_records(client, path, spec, PARAMS, ZARR_TILES, kill_one)
    assert killed and pids[0] not in client.run(os.getpid).values()  # it did die
    assert_same(got, in_process(path, spec, PARAMS, ZARR_TILES), shape, ZARR_TILES, tmp_path)
