"""Tile grids and lazily read planes (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.utils.plane_source import PlaneSource
from napari_sam_ms.utils.tiling import (
    TileGrid,
    check_patch,
    default_halo,
    default_tile_shape,
    model_patch,
    needs_tiling,
    suggest_zoom,
)


class Recorder:
    """An array that records every region read from it (like a zarr or dask source)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, index):
        out = np.asarray(self.data[index])
        self.reads.append(index)
        self.pixels = getattr(self, "pixels", 0) + out.size
        return out


@pytest.mark.parametrize(
    "plane, tile, halo",
    [((1000, 700), (300, 256), (32, 32)), ((288, 288), 96, 16), ((97, 1), (10, 1), 0),
     ((600, 600), 192, 32), ((50, 300), 96, 16)],
)  # fmt: skip
def test_inner_areas_partition_the_plane_and_outer_areas_keep_full_size(plane, tile, halo):
    grid = TileGrid(plane, tile, halo)
    hits = np.zeros(plane, np.int32)
    hy, hx = grid.halo
    full = [min(n, o) for n, o in zip(plane, grid.outer_shape, strict=True)]
    for t in grid.tiles:
        y0, x0, y1, x1 = t.inner
        oy0, ox0, oy1, ox1 = t.outer
        hits[y0:y1, x0:x1] += 1
        # inside the plane, holding the inner area grown by the halo (as far as the plane
        # goes), and of the full outer size (or the plane's) even at the plane's edges
        assert 0 <= oy0 and 0 <= ox0 and oy1 <= plane[0] and ox1 <= plane[1]
        assert oy0 <= max(0, y0 - hy) and ox0 <= max(0, x0 - hx)
        assert oy1 >= min(plane[0], y1 + hy) and ox1 >= min(plane[1], x1 + hx)
        assert [oy1 - oy0, ox1 - ox0] == full, t
        if oy0 > 0 and oy1 < plane[0]:  # away from the edges: exactly grown by the halo
            assert (oy0, oy1) == (y0 - hy, y1 + hy)
        assert grid.tile(t.index) == t
    assert (hits == 1).all()
    assert len(grid) == len(grid.tiles) == grid.shape[0] * grid.shape[1]
    assert [t.index for t in grid.tiles] == sorted(t.index for t in grid.tiles)  # row-major


def test_a_narrow_last_tile_is_embedded_with_a_full_tile_around_it():
    """600 px in 192 px tiles leaves a 24 px last column: its outer area is not a 56 px
    sliver (24 + halo) but a full 256 px ending at the plane's edge."""
    grid = TileGrid((600, 600), 192, 32)
    assert grid.shape == (4, 4)
    corner = grid.tile((3, 3))
    assert corner.inner == (576, 576, 600, 600)
    assert corner.outer == (344, 344, 600, 600)
    assert grid.inner_edges(corner) == (True, True, False, False)
    assert grid.tile((0, 0)).outer == (0, 0, 256, 256)  # the first tile too: full size
    assert grid.tile((1, 1)).outer == (160, 160, 416, 416)  # inside: grown by the halo
    # the second-last column's halo would cross the edge (576 + 32): shifted back too
    assert grid.tile((1, 2)).outer == (160, 344, 416, 600)
    # a box near the corner is covered by the corner tile's outer area
    assert grid.tile_covering((500, 500, 599, 599)).index == (3, 3)


def test_tile_at_covering_and_inner_edges():
    grid = TileGrid((288, 288), 96, 16)
    assert grid.shape == (3, 3)
    assert grid.tile_at(0, 0).index == (0, 0)
    assert grid.tile_at(95.9, 96).index == (0, 1)
    assert grid.tile_at(287, 150).index == (2, 1)
    with pytest.raises(ValueError, match="outside the plane"):
        grid.tile_at(288, 0)
    # a box inside tile (1, 1)'s outer area, centred in it
    assert grid.tile_covering((90, 90, 200, 200)).index == (1, 1)
    # a box across the (0,0)/(0,1) border, within the halo of both: the nearer centre wins
    assert grid.tile_covering((10, 90, 30, 110)).index == (0, 1)
    assert grid.tile_covering((10, 80, 30, 100)).index == (0, 0)
    # larger than any outer area, or straddling two tiles beyond the halos
    assert grid.tile_covering((0, 0, 288, 288)) is None
    assert grid.tile_covering((40, 40, 150, 60)) is None
    with pytest.raises(ValueError, match="not inside the plane"):
        grid.tile_covering((-1, 0, 10, 10))
    edges = {t.index: grid.inner_edges(t) for t in grid.tiles}
    assert edges[(0, 0)] == (False, False, True, True)
    assert edges[(1, 1)] == (True, True, True, True)
    assert edges[(2, 2)] == (True, True, False, False)
    assert edges[(0, 2)] == (False, True, True, False)
    assert TileGrid((50, 50), 96, 16).inner_edges(TileGrid((50, 50), 96, 16).tiles[0]) == (
        False, False, False, False,
    )  # fmt: skip
    assert [t.index for t in grid.tiles_overlapping((90, 90, 100, 200))] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (((100, 100), 64, 32), "half a tile"),
        (((100, 100), (64, 40), (10, 20)), "half a tile"),
        (((100, 100), 0, 0), "tile_shape must be positive"),
        (((0, 100), 64, 8), "positive size"),
        (((100, 100), 64, -1), "zero or positive"),
        (((100, 100), (64, 64, 64), 8), "pair"),
    ],
)
def test_bad_grids_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        TileGrid(*args)


@pytest.mark.parametrize(
    "tile, zoom, patch, ok",
    [(8, 1, 8, True), (7, 1, 8, False), (4, 2, 8, True), (3, 2, 8, False), ((32, 15), 1, 16, False),
     (None, 1, 16, True)],
)  # fmt: skip
def test_tiles_under_one_patch_are_refused(tile, zoom, patch, ok):
    if ok:
        check_patch(tile, zoom, patch)
        return
    with pytest.raises(ValueError, match=f"smaller than the model's {patch}-pixel patch grid"):
        check_patch(tile, zoom, patch)


def test_model_patch_from_the_model_geometry():
    from types import SimpleNamespace

    sam = SimpleNamespace(
        img_size=1024, prompt_encoder=SimpleNamespace(image_embedding_size=(64, 64))
    )
    micro = SimpleNamespace(
        img_size=256, prompt_encoder=SimpleNamespace(image_embedding_size=(32, 32))
    )
    assert (model_patch(sam), model_patch(micro)) == (16, 8)


def test_default_sizes_and_zoom_rule():
    assert default_tile_shape(1024, 64) == (896, 896)
    assert default_tile_shape(256, 32) == (192, 192)
    assert default_tile_shape(256, 16, zoom=2) == (96, 96)
    assert default_halo(1024) == (128, 128) and default_halo(256, zoom=2) == (16, 16)
    with pytest.raises(ValueError, match="halo"):
        default_tile_shape(256, 64)
    with pytest.raises(ValueError, match="zoom"):
        default_tile_shape(256, 8, zoom=3)
    assert needs_tiling((2048, 300), 1024) and not needs_tiling((1536, 1536), 1024)
    # SAM (16 px per token): 10 px nuclei need 4x to cover 2 tokens; 40 px objects need none
    assert [suggest_zoom(d, 1024) for d in (5, 10, 16, 20, 32, 300)] == [4, 4, 2, 2, 1, 1]
    # micro (8 px per token, 256 input): 10 px -> 2x; 5 px -> 4x; 40 px objects stay at 1x
    assert [suggest_zoom(d, 256, patch=8) for d in (5, 10, 16, 40)] == [4, 2, 1, 1]
    # never zoom so far that a tile holds fewer than four objects across
    assert suggest_zoom(30, 256, patch=32) == 2
    with pytest.raises(ValueError, match="positive"):
        suggest_zoom(0, 1024)


def test_plane_source_reads_regions_with_one_set_of_limits():
    rng = np.random.default_rng(0)
    plane = rng.integers(100, 4000, (300, 200)).astype(np.uint16)
    src = PlaneSource(plane)
    assert src.shape == (300, 200) and src.contrast_limits == (plane.min(), plane.max())
    np.testing.assert_array_equal(src.read((10, 20, 50, 60)), plane[10:50, 20:60])
    # a tile's model input equals the same crop of the whole converted plane
    from napari_sam_ms.utils.image import to_rgb_uint8

    whole = to_rgb_uint8(plane)
    np.testing.assert_array_equal(src.model_input((100, 50, 164, 114)), whole[100:164, 50:114])
    np.testing.assert_array_equal(src.model_input((0, 0, 5, 5), invert=True), 255 - whole[:5, :5])
    zoomed = src.model_input((10, 10, 30, 40), zoom=2)
    assert zoomed.shape == (40, 60, 3) and zoomed.dtype == np.uint8
    with pytest.raises(ValueError, match="inside the plane"):
        src.read((0, 0, 301, 10))
    # channels first and last
    rgb = rng.integers(0, 255, (3, 40, 50), dtype=np.uint8)
    first = PlaneSource(rgb, channel_axis=0)
    assert first.shape == (40, 50)
    np.testing.assert_array_equal(first.read((1, 2, 3, 4)), np.moveaxis(rgb, 0, -1)[1:3, 2:4])
    assert PlaneSource(np.moveaxis(rgb, 0, -1)).shape == (40, 50)
    with pytest.raises(ValueError, match="2D plane"):
        PlaneSource(np.zeros((2, 3, 4, 5)))
    assert PlaneSource.of(src) is src


def test_identity_is_cheap_and_tells_contents_apart():
    a = np.arange(120 * 90, dtype=np.float32).reshape(120, 90)
    b = a.copy()
    b[5, 5] += 1
    assert PlaneSource(a).identity() == PlaneSource(a.copy()).identity()
    assert PlaneSource(a).identity() != PlaneSource(b).identity()
    assert PlaneSource(a).identity() != PlaneSource(a.astype(np.float64)).identity()
    assert PlaneSource(a, contrast_limits=(0, 10)).identity() != PlaneSource(a).identity()


def test_a_large_chunked_plane_is_never_read_whole():
    plane = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
    rec = Recorder(plane)
    src = PlaneSource(rec, max_sample=1 << 16)  # 64 k pixel sample on a 4 M pixel plane
    limits = src.contrast_limits
    assert rec.pixels <= (1 << 16) and len(rec.reads) == 64  # 8 x 8 windows
    assert 0 <= limits[0] < limits[1] <= 1
    before = rec.pixels
    src.model_input((1000, 1000, 1128, 1128))
    assert rec.pixels - before == 128 * 128
    src.identity()  # reuses the sample
    assert rec.pixels - before == 128 * 128


def test_dask_and_zarr_planes_read_only_the_chunks_asked_for(tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    plane = np.random.default_rng(2).integers(0, 60000, (1024, 1024)).astype(np.uint16)
    # dask over a recording source: only the chunks under the region are computed
    rec = Recorder(plane)
    lazy = da.from_array(rec, chunks=(256, 256))
    src = PlaneSource(lazy, contrast_limits=(0, 60000))
    region = src.read((300, 300, 400, 400))  # inside chunk (1, 1)
    np.testing.assert_array_equal(region, plane[300:400, 300:400])
    assert 0 < rec.pixels <= 256 * 256
    # zarr on disk: wrap the array to count what it returns
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=plane.shape,
                        chunks=(128, 128), dtype=plane.dtype)  # fmt: skip
    z[:] = plane
    zrec = Recorder(z)
    zsrc = PlaneSource(zrec, max_sample=1 << 14)
    zsrc.identity()
    sampled = zrec.pixels
    assert sampled <= 1 << 14
    np.testing.assert_array_equal(zsrc.read((0, 500, 10, 520)), plane[0:10, 500:520])
    assert zrec.pixels - sampled == 200


def test_pyramids_level_zero_and_downsampled_reads():
    base = np.random.default_rng(3).random((512, 384), dtype=np.float32)
    levels = [Recorder(base), Recorder(base[::2, ::2].copy()), Recorder(base[::4, ::4].copy())]
    src = PlaneSource(levels)
    assert src.shape == (512, 384) and src.downsample[2] == (4.0, 4.0)
    np.testing.assert_array_equal(src.read((8, 8, 16, 16)), base[8:16, 8:16])
    low = src.read_downsampled((0, 0, 512, 384), 4)
    np.testing.assert_array_equal(low, base[::4, ::4])
    assert levels[2].reads and not levels[0].pixels - 64 > 0  # level 0 read only 8x8
    no_level = src.read_downsampled((0, 0, 512, 384), 8)  # no 8x level: strided level 0
    np.testing.assert_array_equal(no_level, base[::8, ::8])
    with pytest.raises(ValueError, match="pyramid level 1"):
        PlaneSource([base, base[:, ::2]])
    with pytest.raises(ValueError, match="pyramid level 1"):
        PlaneSource([base, np.zeros((600, 400))])
    with pytest.raises(ValueError, match="dimensions"):
        PlaneSource([base, np.zeros((10, 10, 3))])
