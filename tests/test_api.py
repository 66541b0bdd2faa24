"""The public API: Meta's names importable from the package, registry, predictor state."""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType

import numpy as np
import pytest

import napari_sam_ms
from napari_sam_ms import runtime
from napari_sam_ms.weights.config import CONFIGS, full_config

EXPORTED = {
    "ImageEmbedding",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "TiledPredictor",
    "__version__",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "configure",
    "pipeline",
    "propagate",
    "sam_model_registry",
    "segment_batch",
}

# Meta's segment-anything signatures: (name, default) in order; ``inspect.Parameter.empty``
# for a required argument.
REQUIRED = inspect.Parameter.empty
META_SIGNATURES = {
    "SamPredictor": [("sam_model", REQUIRED)],
    "SamPredictor.set_image": [("image", REQUIRED), ("image_format", "RGB")],
    "SamPredictor.set_torch_image": [
        ("transformed_image", REQUIRED),
        ("original_image_size", REQUIRED),
    ],
    "SamPredictor.predict": [
        ("point_coords", None),
        ("point_labels", None),
        ("box", None),
        ("mask_input", None),
        ("multimask_output", True),
        ("return_logits", False),
    ],
    "SamPredictor.predict_torch": [
        ("point_coords", REQUIRED),
        ("point_labels", REQUIRED),
        ("boxes", None),
        ("mask_input", None),
        ("multimask_output", True),
        ("return_logits", False),
    ],
    "SamPredictor.get_image_embedding": [],
    "SamPredictor.reset_image": [],
    "SamAutomaticMaskGenerator": [
        ("model", REQUIRED),
        ("points_per_side", 32),
        ("points_per_batch", 64),
        ("pred_iou_thresh", 0.88),
        ("stability_score_thresh", 0.95),
        ("stability_score_offset", 1.0),
        ("box_nms_thresh", 0.7),
        ("crop_n_layers", 0),
        ("crop_nms_thresh", 0.7),
        ("crop_overlap_ratio", 512 / 1500),
        ("crop_n_points_downscale_factor", 1),
        ("point_grids", None),
        ("min_mask_region_area", 0),
        ("output_mode", "binary_mask"),
    ],
    "SamAutomaticMaskGenerator.generate": [("image", REQUIRED)],
    "build_sam_vit_h": [("checkpoint", None)],
    "build_sam_vit_l": [("checkpoint", None)],
    "build_sam_vit_b": [("checkpoint", None)],
    # Ours (documented in the README): the model card's pipeline, build_sam by name, device.
    "pipeline": [
        ("task", "segment_anything"),
        ("model", None),
        ("checkpoint", None),
        ("device", None),
        ("device_id", None),
    ],
    "build_sam": [("model_type", "vit_b"), ("checkpoint", None)],
    "configure": [("device", None), ("device_id", None)],
}

# Meta's sizes (segment_anything/build_sam.py).
META_SIZES = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}
SIZE_KEYS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads")


def test_all_lists_exactly_the_exports():
    assert set(napari_sam_ms.__all__) == EXPORTED
    assert len(napari_sam_ms.__all__) == len(EXPORTED)  # no name twice
    public = {
        name
        for name, value in vars(napari_sam_ms).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == EXPORTED - {"__version__"}  # nothing exported that __all__ hides
    namespace: dict = {}
    exec("from napari_sam_ms import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPORTED


@pytest.mark.parametrize("name", sorted(META_SIGNATURES))
def test_public_objects_have_metas_signatures(name):
    """Meta's parameters come first, with Meta's names and defaults; anything we add after
    them has a default, so every call written for Meta's code works unchanged."""
    obj = napari_sam_ms
    for part in name.split("."):
        obj = getattr(obj, part)
    params = list(inspect.signature(obj).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    want = META_SIGNATURES[name]
    got = [(p.name, p.default) for p in params[: len(want)]]
    assert got == want
    for extra in params[len(want) :]:
        assert extra.kind is extra.VAR_KEYWORD or extra.default is not REQUIRED, extra


def test_public_classes_are_the_documented_objects():
    from napari_sam_ms.automatic_mask_generator import SamAutomaticMaskGenerator
    from napari_sam_ms.build_sam import build_sam, sam_model_registry
    from napari_sam_ms.pipeline import pipeline
    from napari_sam_ms.predictor import ImageEmbedding, SamPredictor
    from napari_sam_ms.runtime import configure

    assert napari_sam_ms.SamPredictor is SamPredictor
    assert napari_sam_ms.SamAutomaticMaskGenerator is SamAutomaticMaskGenerator
    assert napari_sam_ms.ImageEmbedding is ImageEmbedding
    assert napari_sam_ms.build_sam is build_sam
    assert napari_sam_ms.sam_model_registry is sam_model_registry
    assert napari_sam_ms.pipeline is pipeline
    assert napari_sam_ms.configure is configure
    assert isinstance(napari_sam_ms.__version__, str) and napari_sam_ms.__version__
    fields = [f.name for f in dataclasses.fields(ImageEmbedding)]
    assert fields == ["features", "original_size", "input_size", "early"]
    emb = ImageEmbedding(np.zeros((1, 2, 4, 4), np.float32), (3, 4), (6, 8))
    assert emb.early is None  # only models with HQ-style fusion carry early features
    with pytest.raises(dataclasses.FrozenInstanceError):
        emb.original_size = (1, 1)


def test_registry_has_metas_keys_and_builders():
    reg = napari_sam_ms.sam_model_registry
    assert set(reg) == {"default", "vit_h", "vit_l", "vit_b", "vit_t", "micro", "tiny"}
    assert reg["default"] is reg["vit_h"] is napari_sam_ms.build_sam_vit_h  # as Meta's
    assert reg["vit_l"] is napari_sam_ms.build_sam_vit_l
    assert reg["vit_b"] is napari_sam_ms.build_sam_vit_b
    for name, build in reg.items():
        assert callable(build)
        if name != "default":
            assert build.__name__ == f"build_sam_{name}"


@pytest.mark.parametrize("name", sorted(META_SIZES))
def test_official_sizes_are_metas(name):
    """The big models are not built here: their size arguments are Meta's."""
    config = full_config(CONFIGS[name])
    dim, depth, heads, global_attn = META_SIZES[name]
    assert tuple(config[k] for k in SIZE_KEYS) == (dim, depth, heads)
    assert config["encoder_global_attn_indexes"] == global_attn
    assert (config["image_size"], config["patch_size"], config["window_size"]) == (1024, 16, 14)
    assert (config["prompt_embed_dim"], config["decoder_mlp_dim"]) == (256, 2048)


def test_tiny_builder_builds_the_tiny_size():
    model = napari_sam_ms.sam_model_registry["tiny"]()
    config = full_config(CONFIGS["tiny"])
    assert model.config == config
    assert model.image_encoder.img_size == config["image_size"] == 128
    grid = config["image_size"] // config["patch_size"]
    dim = config["encoder_embed_dim"]
    assert tuple(model.image_encoder.pos_embed.shape) == (1, grid, grid, dim)
    assert len(model.image_encoder.blocks) == config["encoder_depth"]
    assert model.prompt_encoder.embed_dim == config["prompt_embed_dim"]
    assert tuple(model.prompt_encoder.image_embedding_size) == (grid, grid)


def test_pipeline_and_generator_behave_as_documented():
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    task = napari_sam_ms.pipeline("segment_anything", model="tiny")
    task.set_image(image)
    out = task({"points": np.array([[20, 10]]), "labels": np.array([1])}, multimask_output=True)
    assert out["masks"].shape == (3, 48, 64) and out["masks"].dtype == bool
    assert out["iou_predictions"].shape == (3,)
    assert out["low_res_masks"].shape[0] == 3
    with pytest.raises(ValueError, match="segment_anything"):
        napari_sam_ms.pipeline("depth_estimation", model="tiny")

    model = napari_sam_ms.sam_model_registry["tiny"]()
    generator = napari_sam_ms.SamAutomaticMaskGenerator(
        model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = generator.generate(image)
    assert records  # no filter left on: the grid's masks come back as Meta's records
    meta_keys = {"segmentation", "area", "bbox", "predicted_iou", "point_coords"}
    meta_keys |= {"stability_score", "crop_box"}
    for record in records:
        assert meta_keys <= set(record)
        assert record["segmentation"].shape == (48, 64)
        assert record["area"] == int(record["segmentation"].sum())


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
