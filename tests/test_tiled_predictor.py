"""Prompts on large planes through tiles: TiledPredictor, its zarr cache and the pipeline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam_ms import embedding_cache
from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.predictor import ImageEmbedding, SamPredictor
from napari_sam_ms.tiled import TiledPredictor


class BrightnessPredictor:
    """A SamPredictor stand-in: the mask is the bright pixels within ``radius`` of the click
    (in its own image frame), so coordinate mappings can be checked exactly. Its embedding
    is the image itself."""

    def __init__(self, img_size: int = 128, radius: float = 12.0) -> None:
        self.model = SimpleNamespace(
            img_size=img_size,
            mask_threshold=0.0,
            pixel_mean=np.array([123.675, 116.28, 103.53]),
            prompt_encoder=SimpleNamespace(image_embedding_size=(img_size // 16,) * 2),
        )
        self.radius, self.encoded, self.calls = radius, 0, []

    def set_image(self, image):
        self.image = np.asarray(image)
        self.original_size = self.image.shape[:2]
        self.encoded += 1

    @property
    def embedding(self):
        feats = np.moveaxis(self.image, -1, 0)[None].astype(np.float32)
        return ImageEmbedding(feats, self.original_size, self.original_size)

    def set_embedding(self, emb):
        self.image = np.moveaxis(emb.features[0], 0, -1).astype(np.uint8)
        self.original_size = emb.original_size

    def predict(self, points, labels, box, multimask_output=True, return_logits=False):
        self.calls.append((points, box))
        h, w = self.original_size
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        cx, cy = points[0] if points is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        near = (xx - cx) ** 2 + (yy - cy) ** 2 <= self.radius**2
        logits = np.where(near & (self.image[..., 0] > 127), 1.0, -1.0)[None].repeat(3, 0)
        return logits, np.array([0.9, 0.5, 0.1]), np.zeros((3, 32, 32), np.float32)


def _disk_plane(shape, centre, radius, dtype=np.uint16):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return (disk * 3000 + 100).astype(dtype), disk


def test_full_plane_coordinates_of_a_click_on_a_bright_disk():
    plane, disk = _disk_plane((1000, 1300), (620, 905), 7)
    tp = TiledPredictor(BrightnessPredictor(), tile_shape=96, halo=16)
    tp.set_image(plane)
    res = tp.predict(np.array([[905.5, 620.5]]), np.array([1]))
    assert res.tile.index == (620 // 96, 905 // 96) and res.box == res.tile.outer
    full = res.paste(np.zeros(plane.shape, bool))
    np.testing.assert_array_equal(full, disk)
    assert tp.embedded == 1 and res.note == ""


@pytest.mark.parametrize("zoom", [2, 4])
def test_zoomed_tiles_map_back_to_native_pixels(zoom):
    plane, disk = _disk_plane((700, 600), (333, 250), 5)
    pred = BrightnessPredictor(radius=12.0 * zoom)
    tp = TiledPredictor(pred, halo=4, zoom=zoom)
    assert tp.tile_shape == (128 // zoom - 8,) * 2 and tp.canvas_shape == (128, 128)
    tp.set_image(plane)
    res = tp.predict(np.array([[250.5, 333.5]]), np.array([1]))
    # the predictor saw the click zoomed, in the tile's frame
    oy0, ox0 = res.tile.outer[:2]
    np.testing.assert_allclose(pred.calls[-1][0], [[(250.5 - ox0) * zoom, (333.5 - oy0) * zoom]])
    assert pred.image.shape[:2] == (128, 128)
    mask = res.paste(np.zeros(plane.shape, bool))
    # bilinear zoom blurs the disk edge by under a pixel: compare areas and centres
    assert abs(int(mask.sum()) - int(disk.sum())) <= 0.25 * disk.sum()
    np.testing.assert_allclose(np.argwhere(mask).mean(0), [333, 250], atol=0.6)


def test_one_tile_per_click_and_bad_prompts():
    plane = np.zeros((960, 960), np.uint8)
    pred = BrightnessPredictor()
    tp = TiledPredictor(pred, tile_shape=96, halo=16)
    tp.set_image(plane)
    tp.predict(np.array([[10.0, 10.0]]), np.array([1]))
    tp.predict(np.array([[90.0, 30.0], [100.0, 40.0]]), np.array([1, 0]))  # same tile + halo
    assert tp.embedded == 1 and pred.encoded == 1
    tp.predict(np.array([[500.0, 500.0]]), np.array([1]))
    assert tp.embedded == 2
    tp.predict(np.array([[12.0, 12.0]]), np.array([1]))  # back: from the memory cache
    assert tp.embedded == 2
    with pytest.raises(ValueError, match="outside the plane"):
        tp.predict(np.array([[960.0, 5.0]]), np.array([1]))
    with pytest.raises(ValueError, match="within one tile"):
        tp.predict(np.array([[10.0, 10.0], [400.0, 10.0]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="outside the plane"):
        tp.predict(box=np.array([-5, 0, 20, 20]))
    with pytest.raises(ValueError, match="half a tile"):
        TiledPredictor(pred, tile_shape=32, halo=16)
    with pytest.raises(ValueError, match="patch grid"):
        TiledPredictor(pred, tile_shape=8, halo=2)


def test_boxes_from_the_covering_tile_or_a_window_or_a_coarser_level():
    plane, disk = _disk_plane((1024, 1024), (480, 480), 20)
    tp = TiledPredictor(BrightnessPredictor(radius=40.0), tile_shape=96, halo=16)
    tp.set_image(plane)
    inside = tp.predict(box=np.array([100.0, 100.0, 150.0, 150.0]))
    assert inside.tile is not None and inside.tile.index == (1, 1)
    # 50 px across a tile corner, beyond the halos: no tile covers it, a centred window does
    window = tp.predict(box=np.array([455.0, 455.0, 505.0, 505.0]))
    assert window.tile is None and window.note == ""
    assert window.box[2] - window.box[0] == 128
    np.testing.assert_array_equal(window.paste(np.zeros(plane.shape, bool)), disk)
    # a box of 300 px: read at 1/4 (300 / 128 -> 4), mask upsampled to full resolution
    big = tp.predict(box=np.array([330.0, 330.0, 630.0, 630.0]))
    assert big.note == "the box is larger than a tile: answered at 1/4 resolution"
    assert big.masks.shape[1:] == (300, 300) and big.box == (330, 330, 630, 630)
    mask = big.paste(np.zeros(plane.shape, bool))
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.8


def test_a_click_equals_the_untiled_prediction_on_the_outer_crop(tiny):
    rng = np.random.default_rng(5)
    plane = rng.integers(0, 255, (288, 288, 3), dtype=np.uint8)  # 3 x 3 tiles of 96 + 16
    tp = TiledPredictor(SamPredictor(tiny), tile_shape=96, halo=16)
    tp.set_image(plane)
    res = tp.predict(np.array([[150.0, 140.0]]), np.array([1]))
    assert res.tile.index == (1, 1) and res.box == (80, 80, 208, 208) and tp.embedded == 1
    ref = SamPredictor(tiny)
    ref.set_image(plane[80:208, 80:208])
    masks, scores, low_res = ref.predict(np.array([[70.0, 60.0]]), np.array([1]))
    np.testing.assert_array_equal(res.masks, masks)
    np.testing.assert_allclose(res.scores, scores, atol=1e-6)
    np.testing.assert_allclose(res.low_res_logits, low_res, atol=1e-5)
    # a later click in the same tile embeds nothing
    tp.predict(np.array([[100.0, 180.0]]), np.array([1]))
    assert tp.embedded == 1


def test_zarr_cache_is_reused_across_instances_and_half_writes_are_recomputed(
    tiny, tmp_path, monkeypatch
):
    plane = np.random.default_rng(6).integers(0, 4000, (288, 288)).astype(np.uint16)
    click = (np.array([[20.0, 250.0]]), np.array([1]))

    def run():
        tp = TiledPredictor(
            SamPredictor(tiny), 96, 16, cache=EmbeddingCache(tmp_path), model_id="tiny-test"
        )
        tp.set_image(plane)
        return tp, tp.predict(*click)

    first, a = run()
    assert first.embedded == 1
    second, b = run()
    assert second.embedded == 0  # read back from zarr
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)

    # another tile, killed between the features chunk and its completion record
    def killed(_features):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedding_cache, "_checksum", killed)
    tp = TiledPredictor(
        SamPredictor(tiny), 96, 16, cache=EmbeddingCache(tmp_path), model_id="tiny-test"
    )
    tp.set_image(plane)
    with pytest.raises(KeyboardInterrupt):
        tp.predict(np.array([[250.0, 250.0]]), np.array([1]))
    monkeypatch.undo()
    chunks = list(tmp_path.glob("parts/*.zarr/tiles*.features/c/2/2/**/*"))
    assert any(p.is_file() for p in chunks)  # the features chunk was written...
    again, _ = run()
    again.predict(np.array([[250.0, 250.0]]), np.array([1]))
    assert again.embedded == 1  # ...but never read back without its record


def test_pipeline_with_tiles_and_pyramids(tiny):
    from napari_sam_ms.pipeline import SamPipeline

    plane, disk = _disk_plane((300, 400), (150, 250), 10)
    sam = SamPipeline(tiny, tile_shape=96, halo=16)
    sam.set_image(plane)
    out = sam({"points": [[250.5, 150.5]], "labels": [1]})
    assert out["masks"].shape == (3, 300, 400) and out["iou_predictions"].shape == (3,)
    y0, x0, y1, x1 = out["crop_box"]
    assert (y0, x0) == (80, 176) and not out["masks"][:, :y0].any()
    batch = sam({"boxes": [[10, 10, 50, 50], [300, 200, 350, 260]]})
    assert batch["masks"].shape == (2, 3, 300, 400) and len(batch["note"]) == 2
    with pytest.raises(ValueError, match="not available with tiles"):
        sam({"points": [[5, 5]], "labels": [1]}, return_logits=True)
    # a multiscale list turns tiles on by itself and uses level 0
    plain = SamPipeline(tiny)
    plain.set_image([plane, plane[::2, ::2]])
    assert plain.tiled is not None and plain.tiled.source.shape == (300, 400)
    assert plain({"points": [[250.5, 150.5]], "labels": [1]})["masks"].shape == (3, 300, 400)
    plain.set_image(plane[:64, :64])  # a plain array again: Meta's untiled path
    assert plain.tiled is None
    assert plain({"points": [[5, 5]], "labels": [1]})["masks"].shape == (3, 64, 64)
