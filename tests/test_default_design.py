"""The embedded default's second design: TinyViT configs with a fine grid and HQ-SAM-style
fusion of early features (issue 24, item 3). Reduced depths keep the file fast."""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from napari_sam_ms import loader, runtime
from napari_sam_ms.build_sam import build_sam_from_config
from napari_sam_ms.predictor import ImageEmbedding, SamPredictor
from napari_sam_ms.settings import Settings
from napari_sam_ms.weights.checkpoint import save_checkpoint
from napari_sam_ms.weights.config import CONFIGS, full_config
from napari_sam_ms.weights.shapes import expected_shapes

# micro_t's structure (grid, prompt side) with shallower, narrower stages
SMALL = dict(
    CONFIGS["micro_t"],
    encoder_embed_dims=(16, 32, 32, 48),
    encoder_depths=(1, 1, 1, 1),
    encoder_heads=(2, 1, 1, 2),
    encoder_window_sizes=(7, 8, 8, 16),
)
SMALL_HQ = dict(SMALL, hq_fusion=True)
# micro_t8's grids (64x64 first stages, 32x32 embedding) with SMALL's sizes
SMALL8_HQ = dict(SMALL_HQ, encoder_merge_strides=(1, 2, 1))


def _build(cfg: dict, seed: int = 0):
    import mindspore as ms

    runtime.configure()  # before any kernel runs
    ms.set_seed(seed)
    return build_sam_from_config(cfg)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((200, 240, 3), np.uint8)
    img[40:120, 60:150] = 200
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


def _copy_shared(src, dst) -> None:
    """Give ``dst`` the weights of ``src`` for every parameter they share."""
    params = {p.name: p for p in src.get_parameters()}
    for p in dst.get_parameters():
        if p.name in params:
            p.set_data(Tensor(params[p.name].asnumpy()))


def _n_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.get_parameters())


@pytest.mark.parametrize("name", ["micro_t", "micro_t_hq"])
def test_design_configs_build_with_fine_grid(name):
    model = _build(CONFIGS[name])
    assert model.image_encoder.img_size == 256
    assert model.prompt_encoder.image_embedding_size == (64, 64)  # output stride 4
    assert model.prompt_encoder.mask_input_size == (256, 256)  # masks at input resolution
    assert model.config == full_config(CONFIGS[name])
    shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert shapes == expected_shapes(CONFIGS[name])
    # file <= 40 MB: float32 parameters
    assert 2_000_000 < _n_params(model) < 10_000_000


@pytest.mark.parametrize("name", ["micro_t8", "micro_t8_hq"])
def test_lighter_designs_keep_fine_early_features(name):
    model = _build(CONFIGS[name])
    assert model.prompt_encoder.image_embedding_size == (32, 32)  # micro's decoder grid
    assert model.image_encoder.sides[:2] == (64, 64)
    shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert shapes == expected_shapes(CONFIGS[name])
    if name.endswith("hq"):  # a 1x1 kernel takes the 64x64 features into the 128x128 masks
        assert shapes["mask_decoder.compress_vit_feat.0.weight"][2:] == (1, 1)
        _, early = model.image_encoder(Tensor(np.zeros((1, 3, 256, 256), np.float32)))
        assert tuple(early.shape) == (1, 32, 64, 64)


@pytest.mark.parametrize("cfg", [SMALL_HQ, SMALL8_HQ], ids=["same_grid", "twice_as_fine"])
def test_fused_features_are_hq_sams_upscaling(cfg):
    """The channels-last fusion equals compress_vit_feat run on the NCHW early map (HQ-SAM's
    way), pixel for pixel, for early features on the embedding's grid and twice as fine."""
    dec = _build(cfg, 5).mask_decoder
    side = 16 * (2 if cfg is SMALL8_HQ else 1)
    rng = np.random.default_rng(0)
    early = Tensor(rng.standard_normal((2, dec.early_dim, side, side)).astype(np.float32))
    y = dec.early_mask_features(early).asnumpy()  # (B, h*w, 2*2, 2*2, C')
    b, c, h = y.shape[0], y.shape[-1], 16  # the embedding's grid in both cases
    # pixel (4i + 2di + di2, 4j + 2dj + dj2) is y[:, i*h + j, 2di + dj, 2di2 + dj2]
    got = y.reshape(b, h, h, 2, 2, 2, 2, c).transpose(0, 7, 1, 3, 5, 2, 4, 6)
    want = dec.compress_vit_feat(early).asnumpy()
    assert want.shape == (b, c, 4 * h, 4 * h)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-5)
    assert np.abs(want).max() > 0.1


def test_forward_shapes_and_fusion_features():
    model = _build(SMALL_HQ)
    x = Tensor(np.zeros((1, 3, 256, 256), np.float32))
    emb, early = model.image_encoder(x)
    assert tuple(emb.shape) == (1, 128, 64, 64)
    assert tuple(early.shape) == (1, 16, 64, 64)
    plain = _build(SMALL)
    assert tuple(plain.image_encoder(x).shape) == (1, 128, 64, 64)
    out = model(
        [
            {
                "image": Tensor(np.zeros((3, 256, 256), np.float32)),
                "original_size": (256, 256),
                "point_coords": Tensor(np.array([[[100.0, 90.0]]], np.float32)),
                "point_labels": Tensor(np.array([[1]], np.int32)),
            }
        ],
        multimask_output=True,
    )[0]
    assert tuple(out["low_res_logits"].shape) == (1, 3, 256, 256)
    assert tuple(out["masks"].shape) == (1, 3, 256, 256)


def test_config_rejects_fusion_without_one_grid():
    with pytest.raises(ValueError, match="hq_fusion"):  # early features 4x as fine
        full_config(dict(SMALL_HQ, encoder_merge_strides=(2, 2, 1)))
    full_config(SMALL8_HQ)  # twice as fine: fused through a 1x1 kernel
    with pytest.raises(ValueError, match="hq_fusion"):
        full_config(dict(CONFIGS["micro"], hq_fusion=True))


@pytest.fixture(scope="module")
def pair():
    """A plain and an HQ model with the same shared weights, and the HQ model's fusion
    layers made non-trivial."""
    plain, hq = _build(SMALL, 1), _build(SMALL_HQ, 2)
    _copy_shared(plain, hq)
    return plain, hq


def _predict(model, compiled: bool, points=((100.0, 80.0),)):
    settings = Settings(encoder_graphs=compiled, decoder_graphs=compiled)
    predictor = SamPredictor(model, settings=settings)
    predictor.set_image(_image())
    masks, iou, low = predictor.predict(np.array(points, np.float32), np.ones(len(points)))
    return predictor, low, iou


@pytest.mark.parametrize("compiled", [False, True], ids=["op_by_op", "compiled"])
def test_fusion_off_is_plain_sam_and_on_changes_outputs(pair, compiled):
    plain, hq = pair
    ref = _build(SMALL, 1)  # the same seed: the same weights as `plain`
    p_ref, low_ref, iou_ref = _predict(ref, compiled)
    p_plain, low_plain, iou_plain = _predict(plain, compiled)
    assert p_plain.early_features is None and p_plain.embedding.early is None
    np.testing.assert_array_equal(low_plain, low_ref)  # bit-identical
    np.testing.assert_array_equal(iou_plain, iou_ref)

    p_hq, low_hq, iou_hq = _predict(hq, compiled)
    assert tuple(p_hq.early_features.shape) == (1, 16, 64, 64)
    np.testing.assert_array_equal(p_hq.features.asnumpy(), p_plain.features.asnumpy())
    np.testing.assert_array_equal(iou_hq, iou_plain)  # the IoU head ignores the fusion
    assert np.abs(low_hq - low_plain).max() > 1e-3  # the masks do not

    # the early features travel with the embedding record (e.g. through a cache)
    emb = p_hq.embedding
    assert emb.early is not None and emb.early.shape == (1, 16, 64, 64)
    again = SamPredictor(hq, settings=p_hq.settings)
    again.set_embedding(emb)
    _, _, low_again = again.predict(np.array([[100.0, 80.0]], np.float32), np.ones(1))
    np.testing.assert_allclose(low_again, low_hq, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="early"):
        again.set_embedding(ImageEmbedding(emb.features, emb.original_size, emb.input_size))


def test_fusion_compiled_matches_op_by_op(pair):
    _, hq = pair
    _, low_a, iou_a = _predict(hq, False, ((100.0, 80.0), (30.0, 20.0)))
    _, low_b, iou_b = _predict(hq, True, ((100.0, 80.0), (30.0, 20.0)))
    np.testing.assert_allclose(low_b, low_a, rtol=0, atol=1e-3 * np.abs(low_a).max())
    np.testing.assert_allclose(iou_b, iou_a, rtol=0, atol=1e-4)
    assert np.array_equal(low_a > 0, low_b > 0) or np.mean((low_a > 0) != (low_b > 0)) < 1e-4


def test_embedding_cache_keeps_early_features(pair, tmp_path):
    from napari_sam_ms.embedding_cache import EmbeddingCache

    _, hq = pair
    predictor, _, _ = _predict(hq, False)
    emb = predictor.embedding
    cache = EmbeddingCache(tmp_path, max_items=1)
    cache.put("k", emb, "m")
    cache.clear()  # memory only: read back from disk
    back = cache.get("k", "m")
    np.testing.assert_array_equal(back.early, emb.early)
    np.testing.assert_array_equal(back.features, emb.features)


@pytest.mark.parametrize("name", ["micro_t", "micro_t_hq"])
def test_checkpoint_round_trip_and_detection(name, tmp_path):
    from napari_sam_ms.weights.shapes import detect_model_type

    found, config = detect_model_type(expected_shapes(CONFIGS[name]))
    assert (found, config) == (name, full_config(CONFIGS[name]))
    cfg = dict(SMALL_HQ if name.endswith("hq") else SMALL)
    model = _build(cfg, 3)
    path = save_checkpoint(model, tmp_path / f"{name}.ckpt", config=model.config)
    loaded = loader.load_model(checkpoint=str(path))
    got = {p.name: p.asnumpy() for p in loaded.model.get_parameters()}
    want = {p.name: p.asnumpy() for p in model.get_parameters()}
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert loaded.model.mask_decoder.hq_fusion == name.endswith("hq")
    assert detect_model_type({k: v.shape for k, v in want.items()})[0] == "custom"


def test_twice_as_fine_fusion_round_trips_with_its_config(tmp_path):
    from napari_sam_ms.weights.shapes import detect_model_type

    model = _build(SMALL8_HQ, 6)
    path = save_checkpoint(model, tmp_path / "t8.ckpt", config=model.config)
    loaded = loader.load_model(checkpoint=str(path)).model
    assert loaded.image_encoder.merge_strides == (1, 2, 1)
    assert loaded.mask_decoder.early_scale == 2
    x = Tensor(_image()[None, :, :, :].transpose(0, 3, 1, 2)[..., :128, :128].astype(np.float32))
    x = Tensor(np.pad(x.asnumpy(), ((0, 0), (0, 0), (0, 128), (0, 128))))
    for a, b in zip(model.image_encoder(x), loaded.image_encoder(x), strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    # the shapes alone do not say which merging halves the grid: refused, not guessed
    with pytest.raises(ValueError, match="config"):
        detect_model_type({p.name: p.shape for p in model.get_parameters()})


@pytest.mark.parametrize("cfg", [SMALL, SMALL_HQ, SMALL8_HQ], ids=["plain", "hq", "hq8"])
def test_one_training_step_has_finite_loss(cfg):
    from napari_sam_ms.training.synthetic import SyntheticDataset
    from napari_sam_ms.training.trainer import SamTrainer, TrainConfig

    model = _build(cfg, 4)
    data = SyntheticDataset(2, "wide", "train")
    config = TrainConfig(
        steps=1,
        batch_images=1,
        objects_per_image=2,
        correction_rounds=1,
        train_encoder=True,
        val_at_start=False,
        val_every=0,
    )
    trainer = SamTrainer(model, data, None, config, log=None)
    before = model.image_encoder.patch_embed.seq[0].c.weight.asnumpy().copy()
    sources, run = [], trainer.steps.run

    def recording(key, src, *args):
        sources.append(src)
        return run(key, src, *args)

    trainer.steps.run = recording
    metrics = trainer.train_step(0)
    assert np.isfinite(metrics["loss0"]) and np.isfinite(metrics["loss1"])
    after = model.image_encoder.patch_embed.seq[0].c.weight.asnumpy()
    assert not np.array_equal(before, after)  # the encoder was trained
    if cfg.get("hq_fusion"):  # and the fusion layers
        assert trainer.steps.steps  # compiled rounds exist
        # the correction round's (embeddings, early) is graph data, not constants (a plain
        # tuple compiled the round anew at every step: 20 s and 1 GB a step)
        pairs = [src for src in sources if isinstance(src, tuple)]
        assert pairs and all(getattr(src, "__ms_mutable__", False) for src in pairs)
