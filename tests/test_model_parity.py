"""Parity of the MindSpore model with Meta's PyTorch reference, live.

Meta's model is built with random weights, saved as a real ``.pth``, loaded into ours through
the converter, and both run on the same inputs, op by op (PyNative) and compiled (``ms.jit``).
Tolerances (issue 2): image embedding relative error <= 1e-4, mask logits <= 1e-3 relative to
their largest magnitude, IoU predictions absolute <= 1e-4.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from reference import assert_masks_match

from napari_sam_ms import runtime
from napari_sam_ms.build_sam import CONFIGS, sam_model_registry

MODES = ["pynative", "jit"]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def load_ours(name: str, pth, mode: str, **overrides):
    model = sam_model_registry[name](checkpoint=pth, **overrides)
    return runtime.compile_model(model, enable=(mode == "jit"))


def prompt_cases(img_size: int, rng: np.random.Generator) -> dict[str, dict]:
    """Prompts in the model's input frame, batch of 2 objects each."""
    s = float(img_size)
    pts = rng.uniform(0, s, (2, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, 1], [1, 1, 0]], np.int32)
    boxes = np.sort(rng.uniform(0, s, (2, 2, 2)), axis=1).reshape(2, 4).astype(np.float32)
    mask = rng.normal(0, 3, (2, 1, img_size // 4, img_size // 4)).astype(np.float32)
    return {
        "points": dict(points=(pts, labels), boxes=None, masks=None),
        "box": dict(points=None, boxes=boxes, masks=None),
        "box+points": dict(points=(pts, labels), boxes=boxes, masks=None),
        "mask": dict(points=(pts[:, :1], labels[:, :1]), boxes=None, masks=mask),
        "all": dict(points=(pts, labels), boxes=boxes, masks=mask),
    }


def run_decoder_ref(ref, emb: np.ndarray, case: dict, multimask: bool):
    with torch.no_grad():
        pts = case["points"]
        sparse, dense = ref.prompt_encoder(
            None if pts is None else (torch.from_numpy(pts[0]), torch.from_numpy(pts[1])),
            None if case["boxes"] is None else torch.from_numpy(case["boxes"]),
            None if case["masks"] is None else torch.from_numpy(case["masks"]),
        )
        masks, iou = ref.mask_decoder(
            torch.from_numpy(emb), ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )
    return masks.numpy(), iou.numpy()


def run_decoder_ours(model, emb: np.ndarray, case: dict, multimask: bool):
    pts = case["points"]
    sparse, dense = model.prompt_encoder(
        None if pts is None else (ms.Tensor(pts[0]), ms.Tensor(pts[1])),
        None if case["boxes"] is None else ms.Tensor(case["boxes"]),
        None if case["masks"] is None else ms.Tensor(case["masks"]),
    )
    masks, iou = model.mask_decoder(
        ms.Tensor(emb), model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
    )
    return masks.asnumpy(), iou.asnumpy()


def check_model(ref, ours, img_size: int, image_hw: tuple[int, int], rng) -> dict[str, float]:
    """Compare encoder, prompt encoder and decoder; return the worst errors seen."""
    x = rng.uniform(0, 255, (1, 3, *image_hw)).astype(np.float32)
    with torch.no_grad():
        emb_ref = ref.image_encoder(ref.preprocess(torch.from_numpy(x))).numpy()
    emb = ours.image_encoder(ours.preprocess(ms.Tensor(x))).asnumpy()
    errs = {"embedding_rel": rel_err(emb, emb_ref), "mask_rel": 0.0, "iou_abs": 0.0}
    for case in prompt_cases(img_size, rng).values():
        for multimask in (True, False):
            m_ref, i_ref = run_decoder_ref(ref, emb_ref, case, multimask)
            m, i = run_decoder_ours(ours, emb_ref, case, multimask)
            assert m.shape == m_ref.shape and i.shape == i_ref.shape
            errs["mask_rel"] = max(errs["mask_rel"], rel_err(m, m_ref))
            errs["iou_abs"] = max(errs["iou_abs"], float(np.abs(i - i_ref).max()))
    assert errs["embedding_rel"] <= 1e-4, errs
    assert errs["mask_rel"] <= 1e-3, errs
    assert errs["iou_abs"] <= 1e-4, errs
    return errs


@pytest.mark.parametrize("mode", MODES)
def test_tiny_parity(tiny_reference, tiny_pth, mode, rng):
    ours = load_ours("tiny", tiny_pth, mode)
    check_model(tiny_reference, ours, 128, (128, 96), rng)


@pytest.mark.parametrize("mode", MODES)
def test_sam_forward_parity(tiny_reference, tiny_pth, mode, rng):
    """Meta's batched ``Sam.forward`` (list of records) against ours, incl. postprocessing."""
    ours = load_ours("tiny", tiny_pth, mode)
    img = rng.uniform(0, 255, (3, 128, 100)).astype(np.float32)
    pts = np.array([[[20.0, 30.0]], [[70.0, 90.0]]], np.float32)
    labels = np.ones((2, 1), np.int32)
    boxes = np.array([[5, 5, 60, 70], [30, 40, 90, 120]], np.float32)
    rec = dict(image=img, original_size=(160, 125), point_coords=pts, point_labels=labels)
    rec_box = dict(image=img, original_size=(160, 125), boxes=boxes)
    with torch.no_grad():
        out_ref = tiny_reference(
            [
                {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}
                for r in (rec, rec_box)
            ],
            multimask_output=True,
        )
    out = ours(
        [
            {k: ms.Tensor(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}
            for r in (rec, rec_box)
        ],
        True,
    )
    for o, r in zip(out, out_ref, strict=True):
        with torch.no_grad():
            ref_logits = tiny_reference.postprocess_masks(
                r["low_res_logits"], img.shape[1:], rec["original_size"]
            ).numpy()
        assert_masks_match(o["masks"].asnumpy(), r["masks"].numpy(), ref_logits)
        np.testing.assert_allclose(
            o["iou_predictions"].asnumpy(), r["iou_predictions"].numpy(), atol=1e-4
        )
        assert rel_err(o["low_res_logits"].asnumpy(), r["low_res_logits"].numpy()) <= 1e-3


@pytest.fixture(scope="module")
def vit_b_shallow(tmp_path_factory):
    """Meta's vit_b geometry (1024 input, 768 wide, 12 heads, window 14, 256-d decoder)
    with depth reduced to one windowed and one global block, to keep CI time sane."""
    from reference import build_reference_sam

    cfg = dict(CONFIGS["vit_b"], encoder_depth=2, encoder_global_attn_indexes=(1,))
    ref = build_reference_sam(cfg, seed=3)
    path = tmp_path_factory.mktemp("vitb") / "sam_vit_b_shallow.pth"
    torch.save(ref.state_dict(), path)
    return ref, path, cfg


def test_vit_b_geometry_parity(vit_b_shallow, rng):
    """Op by op only: a compiled global-attention block of this size holds ~7 GB of memory
    (the compiled route is covered by the tiny model)."""
    mode = "pynative"
    ref, path, cfg = vit_b_shallow
    ours = load_ours("vit_b", path, mode, encoder_depth=2, encoder_global_attn_indexes=(1,))
    errs = check_model(ref, ours, 1024, (768, 1024), rng)
    print(f"vit_b (2 blocks, {mode}) errors: {errs}")


@pytest.mark.slow
def test_vit_b_full_parity(tmp_path, rng):
    """Full 12-block vit_b with random weights (about a minute; run with --run-slow)."""
    from reference import build_reference_sam

    ref = build_reference_sam(CONFIGS["vit_b"], seed=5)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(ref.state_dict(), path)
    # PyNative: twelve per-block graphs would hold more memory than the machine has.
    ours = load_ours("vit_b", path, "pynative")
    errs = check_model(ref, ours, 1024, (768, 1024), rng)
    print(f"vit_b (12 blocks) errors: {errs}")
