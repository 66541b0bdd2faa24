"""Images and prompts as users really pass them: documented conversions or clear errors.

Every bad input must raise a ValueError/TypeError that says what is wrong, never an error from
inside MindSpore.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from napari_sam_ms.pipeline import SamPipeline, pipeline
from napari_sam_ms.predictor import SamPredictor
from napari_sam_ms.utils.image import to_rgb_uint8

H, W = 48, 64


@pytest.fixture(scope="module")
def sam():
    from napari_sam_ms.build_sam import sam_model_registry

    return sam_model_registry["tiny"]()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[10:30, 10:40] = (250, 20, 20)
    return img


@pytest.fixture(scope="module")
def pipe(sam, rgb) -> SamPipeline:
    p = pipeline("segment_anything", model=sam)
    p.set_image(rgb)
    return p


PROMPT = {"boxes": np.array([10, 10, 40, 30])}


@pytest.fixture
def seen(sam, monkeypatch) -> tuple[SamPipeline, list]:
    """A pipeline that records the model-size image it would encode (and skips encoding)."""
    p = pipeline("segment_anything", model=sam)
    images: list[np.ndarray] = []

    def record(transformed, original_size):
        images.append(transformed.asnumpy()[0])
        p.predictor._set_state(None, original_size, transformed.shape[2:])

    monkeypatch.setattr(p.predictor, "set_torch_image", record)
    return p, images


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def fed(seen: tuple[SamPipeline, list], image) -> np.ndarray:
    """The (3, h, w) image the pipeline hands to the encoder for ``image``."""
    p, images = seen
    p.set_image(image)
    return images[-1]


# ------------------------------------------------------------------------- images
def test_grayscale_is_repeated_to_rgb(seen, rgb):
    gray = rgb[..., 0]
    expected = fed(seen, np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(fed(seen, gray), expected)
    assert np.array_equal(fed(seen, gray[..., None]), expected)  # (H, W, 1)


def test_rgba_drops_alpha(seen, rgb):
    alpha = np.full((H, W, 1), 7, np.uint8)
    assert np.array_equal(fed(seen, np.concatenate([rgb, alpha], axis=-1)), fed(seen, rgb))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64, np.bool_])
def test_other_dtypes_are_scaled_min_to_max(seen, rgb, dtype):
    data = (rgb.astype(np.float64) * 3 + 100).astype(dtype)
    if dtype == np.bool_:
        manual = data.astype(np.uint8) * 255
    else:
        # The documented linear rescale of the image's min..max to 0..255.
        lo, hi = float(data.min()), float(data.max())
        manual = np.floor((data.astype(np.float64) - lo) * 255 / (hi - lo) + 0.5)
    assert np.array_equal(to_rgb_uint8(data), manual.astype(np.uint8))
    assert np.array_equal(fed(seen, data), fed(seen, manual.astype(np.uint8)))


def test_nan_pixels_become_the_minimum(seen, rgb):
    data = rgb[..., 0].astype(np.float32)
    data[5:9, 5:9] = np.nan
    data[0, 0] = np.inf
    filled = np.where(np.isfinite(data), data, np.nanmin(data[np.isfinite(data)]))
    assert np.array_equal(fed(seen, data), fed(seen, filled))


def test_all_nan_and_constant_images_are_black(seen):
    black = fed(seen, np.zeros((H, W, 3), np.uint8))
    assert np.array_equal(fed(seen, np.full((H, W), np.nan)), black)
    assert np.array_equal(fed(seen, np.full((H, W), 1234, np.uint16)), black)


def test_converted_images_run_end_to_end(sam, rgb):
    """Each kind of image goes through the real model and gives finite results."""
    p = pipeline("segment_anything", model=sam)
    nan_gray = rgb[..., 1].astype(np.float32) / 7
    nan_gray[:4] = np.nan
    rgba16 = np.concatenate([rgb, np.zeros((H, W, 1), np.uint8)], axis=-1).astype(np.uint16) * 200
    for image in (nan_gray, rgba16):
        p.set_image(image)
        out = p(PROMPT, multimask_output=False)
        assert out["masks"].shape == (1, H, W)
        assert np.isfinite(out["iou_predictions"]).all()
        assert np.isfinite(out["low_res_masks"]).all()


@pytest.mark.parametrize(
    "shape, message",
    [((H, W, 2), "expected a 2D image"), ((4, H, W, 3), "expected a 2D image"), ((0, W), "empty")],
)
def test_bad_image_shapes(pipe, shape, message):
    with pytest.raises(ValueError, match=message):
        pipe.set_image(np.zeros(shape, np.uint8))


def test_channels_first_hint(pipe):
    with pytest.raises(ValueError, match="moveaxis"):
        pipe.set_image(np.zeros((3, H, W, 5), np.uint8))


def test_unreadable_paths(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pipe.set_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        pipe.set_image(bad)
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="cannot read TIFF"):
        pipe.set_image(bad_tif)


def test_sixteen_bit_png_and_palette_images(seen, tmp_path):
    from PIL import Image

    data = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7) % 60000
    Image.fromarray(data).save(tmp_path / "deep.png")
    assert np.array_equal(fed(seen, tmp_path / "deep.png"), fed(seen, data))
    pal = Image.fromarray(np.tile(np.arange(W, dtype=np.uint8) * 3, (H, 1))).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(
        fed(seen, tmp_path / "pal.png"), fed(seen, np.asarray(pal.convert("RGB")))
    )


# ------------------------------------------------------------------------ prompts
def test_prompt_before_set_image(sam):
    p = pipeline("segment_anything", model=sam)
    with pytest.raises(RuntimeError, match="call set_image"):
        p({"points": [[1, 2]], "labels": [1]})


@pytest.mark.parametrize(
    "prompt, error, message",
    [
        ({}, ValueError, "no prompt given"),
        ({"points": np.zeros((0, 2)), "labels": np.zeros(0)}, ValueError, "empty"),
        ({"boxes": np.zeros((0, 4))}, ValueError, "empty"),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, ValueError, "one label per point"),
        ({"points": [[[1, 2]], [[3, 4]]], "labels": [1, 1]}, ValueError, "one label per point"),
        ({"points": [[1, 2]]}, ValueError, "go together"),
        ({"labels": [1]}, ValueError, "go together"),
        ({"points": [[np.nan, 2]], "labels": [1]}, ValueError, "NaN"),
        ({"points": [[1, 2, 3]], "labels": [1]}, ValueError, r"points must have shape \(N, 2\)"),
        ({"points": [[1, 2]], "labels": [2]}, ValueError, "background is 0"),
        ({"points": [[1, 2]], "labels": [-1]}, ValueError, "1 \\(foreground\\) or 0"),
        ({"points": [[1, 2], [3]], "labels": [1, 1]}, ValueError, "regular array"),
        ({"points": [["a", "b"]], "labels": [1]}, ValueError, "numeric"),
        ({"boxes": [1, 2, 3]}, ValueError, r"boxes must have shape \(4,\)"),
        ({"boxes": [[1, 2, 3, 4, 5]]}, ValueError, r"boxes must have shape"),
        ({"boxes": np.zeros((2, 1, 4))}, ValueError, r"boxes must have shape"),
        ({"boxes": [1, 2, np.nan, 4]}, ValueError, "NaN"),
        ({"points": [[70, 10]], "labels": [1]}, ValueError, "outside the 64x48 image"),
        ({"points": [[10, -1]], "labels": [1]}, ValueError, "outside"),
        (
            {"points": [[[1, 2]], [[3, 4]]], "labels": [[1], [1]], "boxes": [1, 2, 30, 40]},
            ValueError,
            "same number of objects",
        ),
        (
            {"points": [[1, 2]], "labels": [1], "boxes": [[1, 2, 30, 40], [0, 0, 9, 9]]},
            ValueError,
            "same number of objects",
        ),
        ({"image": np.zeros((H, W))}, ValueError, "set_image"),
        ({"point": [[1, 2]], "labels": [1]}, ValueError, "unknown prompt keys"),
        ({"mask_input": np.zeros((1, 5, 5))}, ValueError, "mask_input"),
    ],
)
def test_bad_prompts(pipe, prompt, error, message):
    with pytest.raises(error, match=message):
        pipe(prompt)


def test_inputs_must_be_a_dict(pipe):
    with pytest.raises(TypeError, match="inputs must be a dict"):
        pipe(np.array([[1, 2]]))


def test_lists_single_points_and_edges(pipe):
    """Plain lists, a bare (x, y) point and points on the image border are accepted."""
    a = pipe({"points": [[20, 20]], "labels": [1]}, multimask_output=False)
    b = pipe({"points": np.array([20, 20]), "labels": 1}, multimask_output=False)
    assert same(a, b)
    edge = pipe({"points": [[0, 0], [W, H]], "labels": [1, 0]}, multimask_output=False)
    assert edge["masks"].shape == (1, H, W)


def test_integer_coordinates_are_not_truncated(pipe):
    """Integer and float prompts agree, and fractions count (the old port truncated)."""

    def batch(points: np.ndarray) -> np.ndarray:
        out = pipe({"points": points, "labels": [[1], [1]]}, multimask_output=False)
        return out["low_res_masks"]

    ints = batch(np.array([[[21, 17]], [[40, 30]]]))
    assert np.allclose(ints, batch(np.array([[[21.0, 17.0]], [[40.0, 30.0]]])))
    assert not np.allclose(ints, batch(np.array([[[21.4, 17.4]], [[40.4, 30.4]]])))


def test_box_outside_image_is_clipped(pipe):
    inside = pipe({"boxes": [0, 0, W, H]}, multimask_output=False)
    outside = pipe({"boxes": [-50, -50, W + 50, H + 50]}, multimask_output=False)
    assert same(inside, outside)


def test_mask_input_refines(pipe):
    first = pipe({"points": [[20, 20]], "labels": [1]}, multimask_output=True)
    best = first["low_res_masks"][np.argmax(first["iou_predictions"])][None]
    refined = pipe(
        {"points": [[20, 20]], "labels": [1], "mask_input": best}, multimask_output=False
    )
    plain = pipe({"points": [[20, 20]], "labels": [1]}, multimask_output=False)
    assert refined["masks"].shape == (1, H, W)
    assert not np.allclose(refined["low_res_masks"], plain["low_res_masks"])


def test_predictor_validation_directly(sam, rgb):
    """The predictor itself validates too (the widget calls it without the pipeline)."""
    pred = SamPredictor(sam)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(np.array([[1, 2]]), np.array([1]))
    pred.set_image(rgb)
    with pytest.raises(ValueError, match="one label per point"):
        pred.predict(np.array([[1, 2]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="box must have 4 numbers"):
        pred.predict(box=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="no prompt given"):
        pred.predict()
    with pytest.raises(ValueError, match="NaN"):
        pred.predict_batch(np.full((1, 1, 2), np.nan), np.ones((1, 1)))


# ----------------------------------------------------------------- construction
def test_task_and_model_checks(sam):
    with pytest.raises(ValueError, match="segment_anything"):
        pipeline("text-generation", model=sam)
    with pytest.raises(ValueError, match="unknown model type 'sam_vit_x'"):
        pipeline("segment_anything", model="sam_vit_x")
    with pytest.raises(TypeError, match="model name or a Sam"):
        pipeline("segment_anything", model=3)
    with pytest.raises(ValueError, match="not both"):
        pipeline("segment_anything", model=sam, checkpoint="x.ckpt")


def test_names_and_checkpoints_go_through_the_loader(monkeypatch, sam):
    """Every model choice is the loader's (test_loader checks its decisions); a built Sam is
    used as given."""
    from napari_sam_ms.loader import describe_model

    mod = importlib.import_module("napari_sam_ms.pipeline")
    calls = []

    def fake_load_model(model=None, checkpoint=None):
        calls.append((model, checkpoint))
        return describe_model(sam)

    monkeypatch.setattr(mod, "load_model", fake_load_model)
    assert pipeline("segment_anything", model="sam_vit_b").model is sam
    assert pipeline("segment_anything", model="vit_l", checkpoint="w.ckpt").model is sam
    assert pipeline("segment_anything").model is sam
    assert pipeline("segment_anything", model=sam).model is sam
    assert calls == [("sam_vit_b", None), ("vit_l", "w.ckpt"), (None, None)]


def test_checkpoint_alone_gives_its_model(tmp_path):
    from napari_sam_ms.build_sam import sam_model_registry
    from napari_sam_ms.weights.checkpoint import save_checkpoint

    model = sam_model_registry["tiny"]()
    path = save_checkpoint(model, tmp_path / "tiny.ckpt")
    p = pipeline("segment_anything", checkpoint=path)
    assert p.model.config == model.config
    key = "mask_decoder.iou_token.weight"
    ours = dict(p.model.parameters_and_names())[key].asnumpy()
    assert np.array_equal(ours, dict(model.parameters_and_names())[key].asnumpy())


def test_one_object_prompt_next_to_a_batch(pipe):
    """Points (N, 2) with boxes (1, 4) are a batch of one object."""
    out = pipe(
        {"points": [[20, 20]], "labels": [1], "boxes": [[10, 10, 40, 30]]}, multimask_output=False
    )
    single = pipe({"points": [[20, 20]], "labels": [1], "boxes": [10, 10, 40, 30]}, False)
    assert out["masks"].shape == (1, 1, H, W)
    assert np.allclose(out["low_res_masks"][0], single["low_res_masks"], atol=1e-5)
