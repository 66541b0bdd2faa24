"""The public API: Meta's names importable from the package, registry, predictor state."""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam_ms
from napari_sam_ms import runtime


@pytest.mark.parametrize(
    "name",
    ["sam_model_registry", "build_sam", "SamPredictor", "SamAutomaticMaskGenerator", "pipeline"],
)
def test_meta_names_exported(name):
    assert callable(getattr(napari_sam_ms, name)) or isinstance(getattr(napari_sam_ms, name), dict)


def test_registry_has_meta_keys():
    reg = napari_sam_ms.sam_model_registry
    assert {"default", "vit_h", "vit_l", "vit_b", "tiny"} <= set(reg)


def test_unknown_model_type_names_the_choices():
    from napari_sam_ms.build_sam import normalize_model_type

    assert normalize_model_type("sam_vit_b") == "vit_b"
    with pytest.raises(ValueError, match="vit_b"):
        normalize_model_type("vit_x")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="CPU, GPU, Ascend"):
        runtime.configure(device="TPU")


def test_device_cannot_change_after_start():
    assert runtime.configure() == "CPU"
    with pytest.raises(RuntimeError, match="restart"):
        runtime.configure(device="GPU")


@pytest.fixture(scope="module")
def predictor():
    model = napari_sam_ms.sam_model_registry["tiny"]()
    return napari_sam_ms.SamPredictor(model)


def test_predict_before_set_image_is_a_clear_error(predictor):
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1, 1]]), np.array([1]))


def test_embedding_round_trip(predictor, rng):
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    predictor.set_image(image)
    emb = predictor.embedding
    assert emb.features.shape == (1, 32, 8, 8)
    assert emb.original_size == (50, 70) and emb.input_size == (91, 128)
    first = predictor.predict(np.array([[10, 20]]), np.array([1]), return_logits=True)
    predictor.reset_image()
    assert not predictor.is_image_set
    predictor.set_embedding(emb)
    again = predictor.predict(np.array([[10, 20]]), np.array([1]), return_logits=True)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_embedding_of_other_model_is_refused(predictor):
    from napari_sam_ms.predictor import ImageEmbedding

    bad = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="does not fit"):
        predictor.set_embedding(bad)


def test_bgr_input_matches_rgb(predictor, rng):
    image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    predictor.set_image(image)
    rgb = predictor.get_image_embedding().asnumpy()
    predictor.set_image(image[..., ::-1], image_format="BGR")
    np.testing.assert_array_equal(predictor.get_image_embedding().asnumpy(), rgb)


def test_box_corners_in_any_order_give_the_same_mask(predictor, rng):
    predictor.set_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a = predictor.predict(box=np.array([10, 12, 50, 40]), multimask_output=False)[0]
    b = predictor.predict(box=np.array([50, 40, 10, 12]), multimask_output=False)[0]
    np.testing.assert_array_equal(a, b)
