"""Prompt predictions averaged over mirror images (MirrorAveragedPredictor)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.embedding_cache import EmbeddingCache
from napari_sam_ms.mirror_average import VIEWS, MirrorAveragedPredictor
from napari_sam_ms.predictor import SamPredictor
from napari_sam_ms.weights import mirror_average_default


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(128, 128), (96, 128)])  # (96, 128): padded rows
def test_mean_of_plain_predictions_on_mirrored_images(tiny, shape):
    """Each view equals a plain predictor run on the flipped image with the flipped prompt;
    the result is their mean, mirrored back. The images need no resizing (longest side =
    the model's 128), so flipped image and flipped resized image are the same."""
    h, w = shape
    image = _image(shape)
    points = np.array([[[20.0, 30.0], [90.0, 60.0]]])  # (x, y)
    labels = np.array([[1, 0]])
    box = np.array([[10.0, 12.0, 70.0, 80.0]])
    mirror = MirrorAveragedPredictor(tiny)
    mirror.set_image(image)
    got, got_iou, got_low = mirror.predict_batch(points, labels, box, return_logits=True)
    plain = SamPredictor(tiny)
    want, want_iou, want_low = 0.0, 0.0, 0.0
    valid = (h // 4, w // 4)  # the low-res rows and columns that cover the image
    for flip_rows, flip_cols in VIEWS:
        img, pts, bx = image, points.copy(), box.copy()
        if flip_rows:
            img, pts[..., 1], bx[:, [1, 3]] = img[::-1], h - 1 - pts[..., 1], h - 1 - bx[:, [3, 1]]
        if flip_cols:
            img, pts[..., 0], bx[:, [0, 2]] = (
                img[:, ::-1],
                w - 1 - pts[..., 0],
                w - 1 - bx[:, [2, 0]],
            )
        plain.set_image(np.ascontiguousarray(img))
        logits, iou, low = plain.predict_batch(pts, labels, bx, return_logits=True)
        low = low.copy()
        if flip_rows:
            logits = logits[..., ::-1, :]
            low[..., : valid[0], :] = low[..., : valid[0], :][..., ::-1, :]
        if flip_cols:
            logits = logits[..., ::-1]
            low[..., : valid[1]] = low[..., : valid[1]][..., ::-1]
        want, want_iou, want_low = want + logits, want_iou + iou, want_low + low
    n = len(VIEWS)
    want, want_iou, want_low = want / n, want_iou / n, want_low / n
    assert got.shape == (1, 3, h, w)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(got_iou, want_iou, atol=1e-5)
    np.testing.assert_allclose(got_low, want_low, atol=1e-4 * np.abs(want_low).max())
    # the identity view alone differs: the average is not just one view
    plain.set_image(image)
    alone, _, _ = plain.predict_batch(points, labels, box, return_logits=True)
    assert np.abs(alone - got).max() > 1e-3
    masks, _, _ = mirror.predict_batch(points, labels, box)
    assert masks.dtype == bool and np.array_equal(masks, got > tiny.mask_threshold)


def test_low_res_logits_feed_back_as_mask_input(tiny):
    """predict's low-res logits have the model frame's shape and work as mask_input: they
    change the prediction, as the same logits do for a plain predictor."""
    mirror = MirrorAveragedPredictor(tiny)
    mirror.set_image(_image((96, 128), seed=1))
    masks, iou, low = mirror.predict(np.array([[40.0, 30.0]]), np.array([1]))
    assert masks.shape == (3, 96, 128) and iou.shape == (3,) and low.shape == (3, 32, 32)
    again, _, _ = mirror.predict(
        np.array([[40.0, 30.0]]),
        np.array([1]),
        mask_input=low[np.argmax(iou)][None],
        multimask_output=False,
    )
    assert again.shape == (1, 96, 128)
    without, _, _ = mirror.predict(
        np.array([[40.0, 30.0]]), np.array([1]), multimask_output=False, return_logits=True
    )
    with_mask, _, _ = mirror.predict(
        np.array([[40.0, 30.0]]),
        np.array([1]),
        mask_input=low[np.argmax(iou)][None],
        multimask_output=False,
        return_logits=True,
    )
    assert np.abs(with_mask - without).max() > 1e-3


def test_embedding_round_trip_and_plain_embeddings_refused(tiny, tmp_path):
    image = _image((128, 100), seed=2)
    mirror = MirrorAveragedPredictor(tiny)
    mirror.set_image(image)
    emb = mirror.embedding
    assert emb.features.shape[0] == len(VIEWS)
    prompt = dict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]))
    first = mirror.predict(**prompt, return_logits=True)
    # through the disk cache, into a new predictor
    EmbeddingCache(tmp_path, max_items=1).put("k", emb, "micro+mirror4")
    cached = EmbeddingCache(tmp_path).get("k", "micro+mirror4")
    other = MirrorAveragedPredictor(tiny)
    other.set_embedding(cached)
    for a, b in zip(first, other.predict(**prompt, return_logits=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    plain = SamPredictor(tiny)
    with pytest.raises(ValueError, match="does not fit"):
        plain.set_embedding(emb)
    plain.set_image(image)
    with pytest.raises(ValueError, match="4 views"):
        other.set_embedding(plain.embedding)
    other.reset_image()
    assert not other.is_image_set and not any(v.is_image_set for v in other.views)
    with pytest.raises(RuntimeError, match="no image"):
        other.predict(**prompt)


def test_only_the_embedded_model_averages():
    assert mirror_average_default("micro") and mirror_average_default("sam_ms_micro")
    assert not any(mirror_average_default(t) for t in ("vit_b", "vit_l", "vit_h", "tiny", "x"))


def test_widget_holder_and_pipeline_pick_it_for_the_embedded_model():
    from napari_sam_ms._qt.model_choice import ModelHolder
    from napari_sam_ms.pipeline import pipeline

    loaded = ModelHolder("micro").get()
    assert isinstance(loaded.predictor, MirrorAveragedPredictor)
    assert loaded.model_id.endswith("+mirror4")  # its cached embeddings are kept apart
    assert type(ModelHolder("tiny").get().predictor) is SamPredictor
    task = pipeline("segment_anything", model="sam_ms_micro")
    assert isinstance(task.predictor, MirrorAveragedPredictor)
    assert type(pipeline("segment_anything", model="tiny").predictor) is SamPredictor


def test_whole_image_decoding_matches_prompt_averaging(tiny):
    """decode_selected (whole-image mode) gives the averaged IoUs of predict_transformed for
    every prompt and its averaged low-res logits for those above the threshold only."""
    mirror = MirrorAveragedPredictor(tiny)
    mirror.set_image(_image((96, 128), seed=3))
    grid = np.stack(np.meshgrid(np.arange(8, 128, 24.0), np.arange(8, 96, 24.0)), -1)
    coords = mirror.transform.apply_coords(grid.reshape(-1, 2), mirror.original_size)[:, None]
    labels = np.ones((len(coords), 1), np.int32)
    _, want_iou, want_low = mirror.predict_transformed(coords, labels)
    threshold = float(np.median(want_iou.max(1)))
    iou, kept, low = mirror.decode_selected(coords, labels, min_iou=threshold)
    np.testing.assert_allclose(iou, want_iou, atol=1e-5)
    assert np.array_equal(kept, np.flatnonzero((want_iou > threshold).any(1)))
    assert 0 < len(kept) < len(coords)
    np.testing.assert_allclose(low.asnumpy(), want_low[kept], atol=1e-4)
    none_kept = mirror.decode_selected(coords, labels, min_iou=np.inf)
    assert none_kept[1].size == 0 and none_kept[2].shape[0] == 0


def test_generator_averages_when_asked(tiny, monkeypatch):
    """The generator's mirror_average (ours; off by default, as Meta's) swaps in the
    averaging predictor; the pipeline of the embedded model turns it on for whole-image mode
    unless a call turns it off."""
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator
    from napari_sam_ms.pipeline import SamPipeline

    assert type(SamAutomaticMaskGenerator(tiny).predictor) is SamPredictor
    gen = SamAutomaticMaskGenerator(
        tiny, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, mirror_average=True
    )
    assert isinstance(gen.predictor, MirrorAveragedPredictor)
    image = _image((96, 128), seed=4)
    records = gen.generate(image)
    assert records and all(r["segmentation"].shape == (96, 128) for r in records)
    # each record is the averaged prediction for its grid point
    mirror = MirrorAveragedPredictor(tiny)
    mirror.set_image(image)
    rec = max(records, key=lambda r: r["predicted_iou"])
    _, ious, _ = mirror.predict(np.array(rec["point_coords"]), np.array([1]))
    assert np.isclose(ious, rec["predicted_iou"], atol=1e-5).any()
    task = SamPipeline(tiny, mirror_average=True)
    assert task.whole_image_defaults["mirror_average"] is True
    seen = []
    generate = SamAutomaticMaskGenerator.generate

    def spy(self, *args, **kwargs):
        seen.append(type(self.predictor))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", spy)
    task({"image": image}, seg_image=True, points_per_side=2)
    task({"image": image}, seg_image=True, points_per_side=2, mirror_average=False)
    assert seen == [MirrorAveragedPredictor, SamPredictor]


def test_embedding_suffix_keeps_cached_embeddings_apart(tiny):
    """Cache ids append the predictor's embedding_suffix: plain and averaged embeddings of
    one model never share an entry."""
    assert SamPredictor(tiny).embedding_suffix == ""
    mirror = MirrorAveragedPredictor(tiny)
    assert mirror.embedding_suffix == "+mirror4"
    assert all(type(view) is SamPredictor for view in mirror.views)
    assert all(view.engine is mirror.engine for view in mirror.views)  # one set of graphs
