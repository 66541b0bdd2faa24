"""Our SamPredictor against Meta's, on the fixtures of ``tests/reference/make_fixtures.py``.

The tiny model is loaded from Meta's own ``.pth`` through our loader. Thresholded masks must
be identical; logits, IoU predictions and low-res logits agree to float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REF = np.load(FIXTURES / "reference_outputs.npz")
META = json.loads(str(REF["meta"]))

LOGIT_RTOL = 1e-3  # max abs error / max |reference logit|
IOU_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    from napari_sam_ms.build_sam import sam_model_registry

    return sam_model_registry["tiny"](checkpoint=FIXTURES / "tiny_sam.pth")


@pytest.fixture(scope="module")
def predictor(model):
    from napari_sam_ms.predictor import SamPredictor

    p = SamPredictor(model)
    p.set_image(REF["image"])
    return p


def ref_masks(name: str) -> np.ndarray:
    """Meta's masks of a case: logits, or booleans unpacked from bits."""
    if f"{name}.masks" in REF:
        return REF[f"{name}.masks"]
    shape = tuple(REF[f"{name}.masks_shape"])
    bits = np.unpackbits(REF[f"{name}.masks_packed"], axis=-1, count=shape[-1])
    return bits.astype(bool).reshape(shape)


def inputs(name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}.in."
    return {k[len(prefix) :]: REF[k] for k in REF.files if k.startswith(prefix)}


def assert_close_logits(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())
    assert err <= LOGIT_RTOL * scale, f"max abs error {err:.3g} vs max |logit| {scale:.3g}"


def assert_outputs(name: str, masks, iou, low_res, return_logits: bool) -> None:
    ref = ref_masks(name)
    assert masks.shape == ref.shape
    if return_logits:
        assert masks.dtype == np.float32
        assert_close_logits(masks, ref)
        np.testing.assert_array_equal(masks > 0, ref > 0)
    else:
        assert masks.dtype == np.bool_
        np.testing.assert_array_equal(masks, ref)
    np.testing.assert_allclose(iou, REF[f"{name}.iou"], rtol=0, atol=IOU_ATOL)
    assert_close_logits(low_res, REF[f"{name}.low_res"])


def test_fixture_config_is_ours():
    from napari_sam_ms.build_sam import CONFIGS

    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIGS["tiny"].items()}
    assert META["config"] == ours


def test_embedding_and_sizes(predictor):
    ref = REF["embedding"]
    err = np.abs(predictor.get_image_embedding().asnumpy() - ref).max()
    assert err <= 1e-5 * np.abs(ref).max()
    assert predictor.input_size == tuple(REF["input_size"])
    assert predictor.original_size == REF["image"].shape[:2]


@pytest.mark.parametrize("name", sorted(META["predict_cases"]))
def test_predict(predictor, name):
    case = META["predict_cases"][name]
    kwargs = inputs(name)
    multimask = case.get("multimask_output", True)
    return_logits = case.get("return_logits", False)
    masks, iou, low_res = predictor.predict(
        **kwargs, multimask_output=multimask, return_logits=return_logits
    )
    assert_outputs(name, masks, iou, low_res, return_logits)


@pytest.mark.parametrize("name", sorted(META["torch_cases"]))
def test_predict_torch(predictor, name):
    """Meta's batched call, prompts already in the resized frame (Meta's transform)."""
    case = META["torch_cases"][name]
    kwargs = inputs(name)
    multimask = case.get("multimask_output", True)
    return_logits = case.get("return_logits", False)
    masks, iou, low_res = predictor.predict_torch(
        kwargs.get("point_coords_transformed"),
        kwargs.get("point_labels"),
        boxes=kwargs.get("boxes_transformed"),
        multimask_output=multimask,
        return_logits=return_logits,
    )
    assert_outputs(name, masks.asnumpy(), iou.asnumpy(), low_res.asnumpy(), return_logits)


@pytest.mark.parametrize("name", sorted(META["torch_cases"]))
def test_predict_batch_in_image_pixels(predictor, name):
    """The same batched prompts given in original-image pixels, mapped by our transform."""
    case = META["torch_cases"][name]
    kwargs = inputs(name)
    size = predictor.original_size
    if "boxes" in kwargs:
        ours = predictor.transform.apply_boxes(kwargs["boxes"], size)
        np.testing.assert_allclose(ours, kwargs["boxes_transformed"], rtol=1e-6, atol=1e-5)
    if "point_coords" in kwargs:
        ours = predictor.transform.apply_coords(kwargs["point_coords"], size)
        np.testing.assert_allclose(ours, kwargs["point_coords_transformed"], rtol=1e-6, atol=1e-5)
    return_logits = case.get("return_logits", False)
    masks, iou, low_res = predictor.predict_batch(
        kwargs.get("point_coords"),
        kwargs.get("point_labels"),
        kwargs.get("boxes"),
        multimask_output=case.get("multimask_output", True),
        return_logits=return_logits,
    )
    assert_outputs(name, masks, iou, low_res, return_logits)
