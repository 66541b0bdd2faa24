"""Whole-image mode through tiles: objects on every tile border and corner appear once and
whole, cut masks and halo duplicates are dropped, re-filtering equals a fresh run, cancel
stops, masks stay crops.

Most tests feed the generator a fake per-tile candidate source (ground-truth disks clipped to
each tile's outer area, so cut and duplicate masks arise as they do with a model); one test
runs the embedded micro model end to end on a 3x3 grid.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_sam_ms.amg_hints import no_objects_hint
from napari_sam_ms.amg_refine import refilter, refilter_labels
from napari_sam_ms.amg_tiles import (
    PlaneBits,
    TileLayout,
    canvas_shape,
    check_canvas,
    cut_keep,
    dedup_across_tiles,
    grid_nms,
    native_logits,
    paint_labels,
    tile_canvas,
)
from napari_sam_ms.automatic_mask_generator import (
    GenerationCancelled,
    SamAutomaticMaskGenerator,
    collect_candidates,
)
from napari_sam_ms.utils.amg import MaskData, batched_mask_to_box, mask_to_rle, nms
from napari_sam_ms.utils.labels import masks_to_labels
from napari_sam_ms.utils.plane_source import PlaneSource
from napari_sam_ms.utils.tiling import TileGrid, model_patch

TILE, HALO, R = 64, 16, 6  # 3x3 tiles of 64 px, halo 16, disks of radius 6
PLANE = (3 * TILE, 3 * TILE)


def _centres(tile: int = TILE) -> list[tuple[int, int]]:
    """A disk on the middle of every inner tile border, on every inner corner, one inside
    each tile, and two on the outer edge of a tile (cut there, whole in its neighbour)."""
    mids, edges = [tile // 2 + tile * k for k in range(3)], [tile, 2 * tile]
    out = [(e, m) for e in edges for m in mids] + [(m, e) for e in edges for m in mids]
    out += [(a, b) for a in edges for b in edges]
    out += [(m + 5, n - 7) for m in mids for n in mids]
    halo = tile // 4
    return out + [(tile + halo, tile // 4), (tile // 4 + 4, 2 * tile - halo)]


def _disk(shape, c, r=R) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r


def _image(shape=PLANE, centres=None, r=R) -> np.ndarray:
    img = np.full(shape, 20, np.uint8)
    for c in centres if centres is not None else _centres():
        img[_disk(shape, c, r)] = 220
    return img


class FakeTiles:
    """Replaces the model: each tile proposes every ground-truth disk meeting its outer area,
    clipped to it (so a disk crossing the outer edge gives a cut mask), with a score that
    differs per tile (so duplicates must be resolved by rank)."""

    def __init__(self, centres, r=R, shape=PLANE):
        self.centres, self.r, self.shape, self.calls = centres, r, shape, 0

    def __call__(self, gen, source, tile, index, counter, embed):
        self.calls += 1
        oy0, ox0, oy1, ox1 = tile.outer
        rles, boxes, scores = [], [], []
        for k, (cy, cx) in enumerate(self.centres):
            if not (oy0 - self.r <= cy < oy1 + self.r and ox0 - self.r <= cx < ox1 + self.r):
                continue
            yy, xx = np.ogrid[oy0:oy1, ox0:ox1]
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= self.r**2  # one mask at a time
            if m.any():
                rles += mask_to_rle(m[None], compact=True)
                boxes.append(batched_mask_to_box(m) + np.array([ox0, oy0, ox0, oy0]))
                scores.append(0.9 + 0.01 * ((index + k) % 5))
        for _ in range(3):  # three batches: 16 points, 6 per batch
            counter.step()
        n = len(rles)
        box = np.asarray([ox0, oy0, ox1, oy1], np.int64)
        return MaskData(
            iou_preds=np.asarray(scores, np.float32),
            points=np.zeros((n, 2)),
            stability_score=np.full(n, 0.97, np.float32),
            boxes=np.asarray(boxes, np.int64).reshape(n, 4),
            rles=rles,
            crop_boxes=np.tile(box, (n, 1)),
            tile_ids=np.full(n, index, np.int64),
        )


@pytest.fixture
def fake(monkeypatch):
    return _use(monkeypatch, FakeTiles(_centres()))


def _use(monkeypatch, source: FakeTiles) -> FakeTiles:
    """The generator's per-tile collection replaced by ``source``."""
    monkeypatch.setattr(SamAutomaticMaskGenerator, "_collect_tile", lambda *a: source(*a))
    return source


@pytest.fixture(scope="module")
def tiny_model():
    import mindspore as ms

    from napari_sam_ms.build_sam import sam_model_registry

    ms.set_seed(0)
    return sam_model_registry["tiny"]()


_RUN = {"points_per_side": 4, "points_per_batch": 6}


def _gen(model, **kw) -> SamAutomaticMaskGenerator:
    args = dict(points_per_side=4, points_per_batch=6, tile_shape=TILE, halo=HALO,
                pred_iou_thresh=0.5)  # fmt: skip
    return SamAutomaticMaskGenerator(model, **(args | kw))


def _best_ious(labels: np.ndarray, centres, r=R) -> list[tuple[int, float]]:
    """Per ground-truth disk: how many labels cover most of it, and the best IoU."""
    out = []
    for c in centres:
        gt = _disk(labels.shape, c, r)
        ids = [i for i in np.unique(labels[gt]) if i]
        ious = [(gt & (labels == i)).sum() / (gt | (labels == i)).sum() for i in ids]
        hits = sum(iou > 0.5 for iou in ious)
        out.append((hits, max(ious, default=0.0)))
    return out


# ------------------------------------------------------------------ the tile rules
def test_every_border_and_corner_object_once_and_whole(fake, tiny_model):
    records = _gen(tiny_model).generate(_image())
    assert fake.calls == 9
    centres = _centres()
    assert len(records) == len(centres)  # no duplicates, no cut pieces
    labels, _, _ = paint_labels(records, PLANE)
    for c, (hits, iou) in zip(centres, _best_ious(labels, centres), strict=True):
        assert hits == 1 and iou == 1.0, c


def test_cut_masks_are_dropped_and_halo_duplicates_removed(fake, tiny_model):
    cands = collect_candidates(tiny_model, _image(), tile_shape=TILE, halo=HALO, **_RUN)
    layout = cands.tiles
    whole = cut = 0
    for crop in cands.crops:
        ok = cut_keep(crop["boxes"], crop["tile_ids"], layout)
        whole, cut = whole + int(ok.sum()), cut + int((~ok).sum())
    assert cut > 0 and whole > len(_centres())  # cut pieces and duplicates were proposed
    kept = refilter(cands, pred_iou_thresh=0.5)
    assert len(kept) == len(_centres())
    whole_disk = int(_disk(PLANE, (96, 96)).sum())
    assert all(r["area"] == whole_disk for r in kept)  # none of them a cut piece


def test_owner_tile_wins_duplicates_and_corner_objects_get_one_owner():
    grid = TileGrid(PLANE, TILE, HALO)
    layout = TileLayout.from_grid(grid)
    boxes = np.array([[58, 58, 70, 70], [10, 10, 20, 20], [63, 0, 64, 5]])
    owners = layout.owners(boxes)
    assert owners.tolist() == [4, 0, 1]  # centre (64.5, 64.5) lies in tile (1, 1)
    assert [grid.tile_at(*_centre_yx(b)).index for b in boxes] == [(1, 1), (0, 0), (0, 1)]
    # the same disk proposed by tiles 0 and 4 (owner 4 scores lower): tile 4's is kept
    m = _disk((PLANE[0], PLANE[1]), (64, 64))
    data = _data_from_plane_masks([m, m], tiles=[0, 4], scores=[0.99, 0.5], layout=layout)
    assert dedup_across_tiles(data, layout, 0.7).tolist() == [False, True]


def test_mask_iou_removes_duplicates_box_nms_misses():
    """A disk and the same disk with a thin tail: box IoU is low, mask IoU high."""
    layout = TileLayout.from_grid(TileGrid(PLANE, TILE, HALO))
    a = _disk(PLANE, (64, 60))
    b = a.copy()
    b[64, 60:75] = True  # a one-pixel tail to the right
    data = _data_from_plane_masks([a, b], tiles=[0, 1], scores=[0.9, 0.8], layout=layout)
    x0, y0, x1, y1 = data["boxes"][0]
    u0, v0, u1, v1 = data["boxes"][1]
    box_iou = ((x1 - x0 + 1) * (y1 - y0 + 1)) / ((u1 - u0 + 1) * (v1 - v0 + 1))
    assert box_iou < 0.7
    assert dedup_across_tiles(data, layout, 0.7).tolist() == [True, False]
    assert dedup_across_tiles(data, layout, 0.95).tolist() == [True, True]


def test_a_guest_piece_inside_a_kept_object_is_dropped_an_owned_nested_one_kept():
    """Half a disk proposed by a tile that does not own it (IoU with the whole ~0.5) is a
    duplicate; a small disk its own tile owns, inside another tile's larger one, is not."""
    layout = TileLayout.from_grid(TileGrid(PLANE, TILE, HALO))
    whole = _disk(PLANE, (70, 70))  # centre in tile (1, 1): tile 4 owns it
    piece = whole & (np.arange(PLANE[1]) < 70)  # its left half, proposed by tile 3 (1, 0)
    data = _data_from_plane_masks([whole, piece], tiles=[4, 3], scores=[0.9, 0.95],
                                  layout=layout)  # fmt: skip
    assert layout.owners(data["boxes"]).tolist() == [4, 4]  # the piece is tile 3's guest
    assert (whole & piece).sum() / (whole | piece).sum() < 0.7  # IoU alone would keep it
    assert dedup_across_tiles(data, layout, 0.7).tolist() == [True, False]
    # a small disk owned by tile 5, inside a larger disk owned by tile 4: both kept
    big = _disk(PLANE, (100, 110), 20)
    small = _disk(PLANE, (100, 129), 1)
    assert not (small & ~big).any()
    data = _data_from_plane_masks([big, small], tiles=[4, 5], scores=[0.9, 0.8], layout=layout)
    assert layout.owners(data["boxes"]).tolist() == [4, 5]
    assert dedup_across_tiles(data, layout, 0.7).tolist() == [True, True]


def _centre_yx(box):
    return (box[1] + box[3] + 1) / 2, (box[0] + box[2] + 1) / 2


def _data_from_plane_masks(masks, tiles, scores, layout) -> MaskData:
    """Candidates from full-plane masks, stored as RLEs over their tiles' outer areas."""
    rles, crops = [], []
    for m, t in zip(masks, tiles, strict=True):
        x0, y0, x1, y1 = layout.outer[t]
        assert not (m.sum() - m[y0:y1, x0:x1].sum())
        rles.append(mask_to_rle(m[None, y0:y1, x0:x1], compact=True)[0])
        crops.append(layout.outer[t])
    return MaskData(
        iou_preds=np.asarray(scores, np.float32),
        stability_score=np.ones(len(masks), np.float32),
        boxes=batched_mask_to_box(np.stack(masks)),
        points=np.zeros((len(masks), 2)),
        rles=rles,
        crop_boxes=np.asarray(crops, np.int64),
        tile_ids=np.asarray(tiles, np.int64),
    )


def test_grid_nms_equals_nms(rng):
    xy = rng.integers(0, 3000, (400, 2))
    wh = rng.integers(1, 200, (400, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.random(400).astype(np.float32)
    scores[::7] = scores[0]  # ties keep input order
    for t in (0.0, 0.3, 0.7):
        assert grid_nms(boxes, scores, t).tolist() == nms(boxes, scores, t).tolist()


def test_paint_labels_equals_masks_to_labels_in_chunks(rng, tmp_path):
    import zarr

    shape = (70, 90)
    masks = [_disk(shape, (rng.integers(0, 70), rng.integers(0, 90)), rng.integers(2, 15))
             for _ in range(25)]  # fmt: skip
    boxes = batched_mask_to_box(np.stack(masks))
    full = [{"segmentation": m, "area": int(m.sum()), "bbox": [int(b[0]), int(b[1]),
             int(b[2] - b[0]), int(b[3] - b[1])], "crop_box": [0, 0, 90, 70]}
            for m, b in zip(masks, boxes, strict=True)]  # fmt: skip
    cropped = [dict(r, segmentation=r["segmentation"][b[1] : b[3] + 1, b[0] : b[2] + 1],
                    crop_box=[int(b[0]), int(b[1]), int(b[2] - b[0] + 1), int(b[3] - b[1] + 1)])
               for r, b in zip(full, boxes, strict=True)]  # fmt: skip
    want, want_index = masks_to_labels(full, shape, return_index=True)
    for records in (full, cropped):
        got, index, visible = paint_labels(records, shape, chunk=16)
        assert np.array_equal(got, want) and got.dtype == want.dtype
        assert index.tolist() == want_index.tolist()
        assert visible.tolist() == np.bincount(want.ravel())[1:].tolist()
    store = zarr.open_array(tmp_path / "l.zarr", mode="w", shape=shape, chunks=(32, 32),
                            dtype="uint16")  # fmt: skip
    paint_labels(cropped, shape, out=store, chunk=32)
    assert np.array_equal(store[:], want)


def test_plane_bits_counts_across_chunks(monkeypatch):
    from napari_sam_ms import amg_tiles

    monkeypatch.setattr(amg_tiles, "CHUNK", 8)
    bits, dense = PlaneBits((30, 30)), np.zeros((30, 30), bool)
    m = _disk((11, 13), (5, 6), 5)
    bits.add(3, 4, m)
    dense[3:14, 4:17] |= m
    probe = np.ones((20, 20), bool)
    assert bits.count_and(0, 0, probe) == dense[:20, :20].sum()


# ------------------------------------------------------- re-filtering, cancel, memory
def test_refilter_equals_a_fresh_run(fake, tiny_model):
    cands = collect_candidates(tiny_model, _image(), tile_shape=TILE, halo=HALO, **_RUN)
    for settings in ({"pred_iou_thresh": 0.5}, {"pred_iou_thresh": 0.925, "box_nms_thresh": 0.5},
                     {"pred_iou_thresh": 0.5, "mask_overlap_thresh": 0.2,
                      "min_mask_region_area": 30}):  # fmt: skip
        direct = _gen(tiny_model, **settings).generate(_image())
        again = refilter(cands, **settings)
        assert len(direct) == len(again) > 0
        for d, a in zip(direct, again, strict=True):
            assert d["bbox"] == a["bbox"] and d["crop_box"] == a["crop_box"]
            assert np.array_equal(d["segmentation"], a["segmentation"])
    labels = refilter_labels(cands, pred_iou_thresh=0.5)
    assert labels.max() == len(_centres())


def test_cancel_stops_between_tiles(fake, tiny_model):
    calls = []

    def progress(done, total):
        calls.append((done, total))
        return done < 7  # cancel during the third tile

    with pytest.raises(GenerationCancelled, match="7 of 27"):
        _gen(tiny_model).generate(_image(), progress=progress)
    assert fake.calls == 3 and calls[0] == (0, 27)


def test_large_plane_keeps_masks_as_crops(monkeypatch, tiny_model):
    """A 2400^2 plane (one full-size bool mask: 5.8 MB) with 40 objects: records hold crops
    and the run's peak allocation stays far below one full-plane mask per object."""
    shape, tile = (2400, 2400), 800
    centres = [(tile * (1 + k % 2), 100 + 55 * k) for k in range(40)]
    _use(monkeypatch, FakeTiles(centres, r=20, shape=shape))
    plane = np.zeros(shape, np.uint8)  # the fake never reads it
    tracemalloc.start()
    gen = _gen(tiny_model, tile_shape=tile, halo=64, mask_overlap_thresh=0.5)
    records = gen.generate(PlaneSource(plane))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(records) == 40
    assert all(r["segmentation"].shape == (41, 41) for r in records)
    assert peak < 4 * shape[0] * shape[1]  # 40 full-size masks: 10 times this
    labels, _, visible = paint_labels(records, shape)
    assert labels.max() == 40 and (visible == _disk((41, 41), (20, 20), 20).sum()).all()


def test_hint_names_the_halo_when_every_mask_is_cut(tiny_model, monkeypatch):
    big = [(TILE, TILE)]  # one disk larger than the halo on the central corner
    _use(monkeypatch, FakeTiles(big, r=30))
    cands = collect_candidates(tiny_model, _image(), tile_shape=TILE, halo=HALO, **_RUN)
    assert len(refilter(cands, pred_iou_thresh=0.5)) == 0
    hint = no_objects_hint(cands, {"pred_iou_thresh": 0.5})
    assert "'halo' from (16, 16)" in hint and "touch a tile edge" in hint


def test_canvas_and_native_logits():
    """Tiles are embedded on one canvas size (zoomed, top left, padded with the model's pixel
    mean); logits come back to the tile's own pixels by cropping and averaging zoom blocks."""

    class Model:
        pixel_mean = np.array([123.675, 116.28, 103.53])

    assert canvas_shape((96, 80), (16, 8), 2) == (256, 192)
    rgb = np.full((50, 40, 3), 7, np.uint8)
    canvas = tile_canvas(rgb, (64, 64), Model())
    assert (canvas[:50, :40] == 7).all() and canvas[60, 60].tolist() == [124, 116, 104]
    logits = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    native = native_logits(logits, (3, 2), 2)
    assert native.shape == (2, 3, 2)
    assert native[1, 2, 1] == logits[1, 4:6, 2:4].mean()
    assert np.array_equal(native_logits(logits, (3, 2), 1), logits[:, :3, :2])

    class Emb:
        original_size = (50, 40)

    with pytest.raises(ValueError, match="canvas"):
        check_canvas(Emb(), (64, 64))


def test_a_narrow_last_tile_gets_a_full_outer_area(monkeypatch, tiny_model):
    """A 200 px plane in 64 px tiles leaves an 8 px last row and column: those tiles are
    embedded over a full 96 px outer area, and disks in that strip, on its border and in
    the corner come out once and whole, none of zero size."""
    shape = (3 * TILE + 8, 3 * TILE + 8)
    centres = [(194, 194), (195, 100), (100, 195), (192, 30), (30, 192)]
    fake = _use(monkeypatch, FakeTiles(centres, shape=shape))
    cands = collect_candidates(
        tiny_model, _image(shape, centres), tile_shape=TILE, halo=HALO, **_RUN
    )
    assert fake.calls == 16
    outer = cands.tiles.outer
    assert (outer[:, 2:] - outer[:, :2] == TILE + 2 * HALO).all()  # (x1 - x0, y1 - y0)
    assert outer[-1].tolist() == [shape[1] - 96, shape[0] - 96, shape[1], shape[0]]
    records = refilter(cands, pred_iou_thresh=0.5)
    assert len(records) == len(centres)
    assert all(min(r["bbox"][2:]) > 0 for r in records)  # no zero-size record
    labels, _, _ = paint_labels(records, shape)
    for c, (hits, iou) in zip(centres, _best_ious(labels, centres), strict=True):
        assert hits == 1 and iou == 1.0, c


def test_tiles_under_the_patch_grid_are_refused(tiny_model):
    patch = model_patch(tiny_model)
    with pytest.raises(ValueError, match=f"smaller than the model's {patch}-pixel patch grid"):
        _gen(tiny_model, tile_shape=patch - 1, halo=0)
    with pytest.raises(ValueError, match=f"at least {patch} px"):
        SamAutomaticMaskGenerator(tiny_model, tile_shape=(64, patch - 2), halo=0)
    assert _gen(tiny_model, tile_shape=patch // 2, halo=0, zoom=2).tile_shape == (patch // 2,) * 2


def test_tiling_arguments_are_checked(tiny_model):
    with pytest.raises(ValueError, match="half a tile"):
        _gen(tiny_model, tile_shape=32, halo=16)
    with pytest.raises(ValueError, match="need tile_shape"):
        SamAutomaticMaskGenerator(tiny_model, halo=8)
    with pytest.raises(ValueError, match="zoom must be one of"):
        _gen(tiny_model, zoom=3)
    with pytest.raises(ValueError, match="crop_n_layers must be 0"):
        _gen(tiny_model, crop_n_layers=1)
    with pytest.raises(ValueError, match="embed is for tiles"):
        SamAutomaticMaskGenerator(tiny_model).generate(_image(), embed=lambda t: None)


# ------------------------------------------------------------ the real (micro) model
@pytest.fixture(scope="module")
def micro():
    from napari_sam_ms.loader import load_model

    return load_model("micro").model


def test_micro_model_segments_border_and_corner_disks_once(micro):
    """The embedded model on a 3x3 grid of 192 px tiles (halo 32, its 256 px input): disks
    of radius 10 on every inner border and corner come out once each, IoU >= 0.9. Tiles
    are embedded through ``embed`` (the cache hook); re-filtering equals the direct run."""
    from napari_sam_ms.amg_settings import model_overrides
    from napari_sam_ms.predictor import SamPredictor

    tile, r = 192, 10
    shape = (3 * tile, 3 * tile)
    centres = _centres(tile)[:16]  # borders and corners
    source = PlaneSource(_image(shape, centres, r))
    predictor, cache = SamPredictor(micro), {}

    def embed(t):
        if t.index not in cache:  # as TiledPredictor.embed_tile: the tile on its canvas
            canvas = canvas_shape((tile, tile), (32, 32), 1)
            predictor.set_image(tile_canvas(source.model_input(t.outer), canvas, micro))
            cache[t.index] = predictor.embedding
        return cache[t.index]

    own = {k: v for k, v in model_overrides("micro").items() if k != "mirror_average"}
    run = {"points_per_side": 16, "tile_shape": tile, "halo": 32}
    records = SamAutomaticMaskGenerator(micro, **run, **own).generate(source, embed=embed)
    labels, _, _ = paint_labels(records, shape)
    for c, (hits, iou) in zip(centres, _best_ious(labels, centres, r), strict=True):
        assert hits == 1 and iou >= 0.9, (c, hits, iou)
    cands = collect_candidates(micro, source, embed=embed, **run)
    again = refilter(cands, **{k: v for k, v in own.items()})
    assert [a["bbox"] for a in again] == [d["bbox"] for d in records]
