"""The CPU fast paths give the op-by-op (PyNative) results: the encoder as shared compiled
block graphs, chunked global attention, the compiled prompt decoder and decoding in chunks.

Tiny model with random weights (seconds); Meta parity of the PyNative path is covered by
test_model_parity.py / test_predictor_parity.py.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from napari_sam_ms import runtime
from napari_sam_ms.build_sam import sam_model_registry
from napari_sam_ms.engine import ClickKey, EncoderGraphs, Engine, stage_indexes
from napari_sam_ms.modeling import image_encoder, kernels
from napari_sam_ms.predictor import ImageEmbedding, SamPredictor
from napari_sam_ms.settings import Settings
from napari_sam_ms.utils import masks as mask_post

STAGE_BLOCKS = 3


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_block_graphs_match_op_by_op(tiny, rng):
    x = ms.Tensor(rng.uniform(0, 255, (1, 3, 96, 128)).astype(np.float32))
    x = tiny.preprocess(x)
    eager = tiny.image_encoder(x).asnumpy()
    graphs = Engine.for_model(tiny).encoder_graphs
    fused = runtime.fusion_available()
    assert rel_err(graphs(x, STAGE_BLOCKS, fused).asnumpy(), eager) <= 1e-5
    # Later calls reuse the graphs with each block's own weights.
    assert rel_err(graphs(x, STAGE_BLOCKS, fused).asnumpy(), eager) <= 1e-5
    assert_template_names_line_up(graphs, fused)


def test_graphs_containing_the_encoder_stay_right_after_block_graphs(rng):
    """A graph compiled after the stage graphs (e.g. a training step with the encoder, after
    the predictor embedded an image) computes the encoder as before: compiling the
    encoder's bound ``embed`` method had made such graphs return channels-last output."""
    runtime.configure()
    model = sam_model_registry["tiny"]()
    x = model.preprocess(ms.Tensor(rng.uniform(0, 255, (1, 3, 128, 128)).astype(np.float32)))
    eager = model.image_encoder(x).asnumpy()
    EncoderGraphs(model.image_encoder)(x, STAGE_BLOCKS, runtime.fusion_available())

    def embed(x):
        return model.image_encoder(x)

    later = ms.jit(embed)(x).asnumpy()
    assert later.shape == eager.shape
    assert rel_err(later, eager) <= 1e-5


def assert_template_names_line_up(graphs: EncoderGraphs, fused: bool):
    """Weights are copied into a stage's template by position: the names must line up."""
    index = {id(blk): i for i, blk in enumerate(graphs.encoder.blocks)}
    for stage in graphs.stages(STAGE_BLOCKS):
        params = graphs.template(stage, fused).params
        sources = [(j, blk, p) for j, blk in enumerate(stage) for p in blk.get_parameters()]
        assert len(sources) == len(params)
        for (j, blk, src), dst in zip(sources, params, strict=True):
            # e.g. encoder "blocks.4.attn.qkv.weight" -> template "blocks.1.attn.qkv.weight"
            prefix = f"blocks.{j}."
            assert dst.name.startswith(prefix)
            assert src.name.endswith(f"blocks.{index[id(blk)]}." + dst.name[len(prefix) :])


def test_stages_share_one_graph_with_their_own_weights(rng):
    """Six blocks as two (windowed, windowed, global) stages run through one template graph;
    each stage's weights are copied in, so the result is the op-by-op one."""
    runtime.configure()
    ms.set_seed(3)
    encoder = image_encoder.ImageEncoderViT(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=6,
        num_heads=2,
        out_chans=16,
        window_size=4,
        global_attn_indexes=(2, 5),
    )
    encoder.set_train(False)
    for p in encoder.get_parameters():
        p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    x = ms.Tensor(rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32))
    eager = encoder(x).asnumpy()
    graphs = EncoderGraphs(encoder)
    fused = runtime.fusion_available()
    assert rel_err(graphs(x, STAGE_BLOCKS, fused).asnumpy(), eager) <= 1e-5
    blocks = list(encoder.blocks)
    assert graphs.stages(STAGE_BLOCKS) == [blocks[:3], blocks[3:]]
    assert len(graphs.templates) == 1
    assert_template_names_line_up(graphs, fused)


@pytest.mark.parametrize(
    ("depth", "global_at", "max_blocks", "expected"),
    [
        (12, (2, 5, 8, 11), 3, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),  # vit_b
        (12, (5, 11), 3, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),  # vit_l's pattern
        (8, (7,), 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),  # vit_h's pattern
        (4, (1,), 1, [[0], [1], [2], [3]]),  # one block per graph
        (5, (), 0, [[0], [1], [2], [3], [4]]),  # 0 counts as 1
        (2, (1,), 3, [[0, 1]]),  # tiny
        (3, (0,), 3, [[0], [1, 2]]),  # ends with windowed blocks
    ],
)
def test_stage_indexes(depth, global_at, max_blocks, expected):
    flags = [i in global_at for i in range(depth)]
    assert stage_indexes(flags, max_blocks) == expected


def test_chunked_global_attention_is_exact(tiny, rng, monkeypatch):
    x = ms.Tensor(rng.normal(0, 1, (1, 8, 8, 32)).astype(np.float32))
    blk = tiny.image_encoder.blocks[1]  # the global block
    assert blk.window_size == 0
    whole = blk(x).asnumpy()
    one_head = 64 * 64 * 4 / 2**20
    assert kernels.attention_chunk(2, 64, one_head) == 1
    monkeypatch.setattr(blk.attn, "attn_chunk_mb", one_head)
    np.testing.assert_array_equal(blk(x).asnumpy(), whole)


@pytest.mark.parametrize("chunk", ["64", "2"])
def test_compiled_decoder_matches_op_by_op(tiny, rng, chunk):
    emb = ImageEmbedding(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32), (96, 128), (96, 128))
    pts = rng.uniform(0, 96, (5, 2, 2))
    lbs = np.array([[1, 0]] * 5)
    box = np.array([[10, 10, 60, 50]] * 5, float)
    op_by_op = SamPredictor(tiny, Settings(decode_chunk=64, decoder_graphs=False))
    op_by_op.set_embedding(emb)
    eager = op_by_op.predict_batch(pts, lbs, box, return_logits=True)
    compiled = SamPredictor(tiny, Settings(decode_chunk=int(chunk), decoder_graphs=True))
    compiled.set_embedding(emb)
    fast = compiled.predict_batch(pts, lbs, box, return_logits=True)
    for a, b in zip(fast, eager, strict=True):
        assert a.shape == b.shape
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("multimask", [True, False])
def test_one_prompt_graph_matches_staged_and_op_by_op(tiny, multimask):
    """One prompt runs the transformer and the upscaling as one compiled graph, several
    run them staged (decode_selected): both give the op-by-op numbers."""
    rng = np.random.default_rng(8)  # local, as below
    emb = ImageEmbedding(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32), (96, 128), (96, 128))
    eager_pred = SamPredictor(tiny, Settings(decoder_graphs=False))
    pred = SamPredictor(tiny, Settings(decoder_graphs=True))
    for p in (eager_pred, pred):
        p.set_embedding(emb)
    pts = rng.uniform(0, 96, (1, 2, 2)).astype(np.float32)
    lbs = np.array([[1, 0]], np.int32)
    mask = rng.normal(0, 1, (1, 1, 32, 32)).astype(np.float32)
    for mask_input in (None, mask):
        eager = [t.asnumpy() for t in eager_pred.decode(pts, lbs, None, mask_input, multimask)]
        one = [t.asnumpy() for t in pred.decode(pts, lbs, None, mask_input, multimask)]
        assert ClickKey(multimask) in pred.engine.decoder_graphs
        iou, _, staged = pred.decode_selected(pts, lbs, None, mask_input, multimask)
        assert one[0].shape == eager[0].shape == (1, 3 if multimask else 1, 32, 32)
        for a, b in zip(one, eager, strict=True):
            assert rel_err(a, b) <= 1e-5
        assert rel_err(one[0], staged.asnumpy()) <= 1e-6
        assert rel_err(one[1], iou) <= 1e-6


def test_channels_last_upscaling_matches_nchw(tiny):
    """The decoder's upscaling on channels-last pixels, shuffled at the end, equals Meta's
    order: NCHW transposed convolutions, LayerNorm2d, then the hypernetwork product."""
    # A local generator: drawing from the session's would change the inputs of the tests
    # that run later (the Meta parity tests among them).
    rng = np.random.default_rng(5)
    md = tiny.mask_decoder
    b, c, h, w = 2, md.transformer_dim, 8, 8
    src = ms.Tensor(rng.normal(0, 1, (b, h * w, c)).astype(np.float32))
    hyper_in = ms.Tensor(rng.normal(0, 1, (b, 3, c // 8)).astype(np.float32))
    nchw = md.output_upscaling(src.transpose(0, 2, 1).reshape(b, c, h, w))
    want = np.einsum("bmc,bchw->bmhw", hyper_in.asnumpy(), nchw.asnumpy())
    got = md.upscale_masks(src, hyper_in, h, w).asnumpy()
    assert got.shape == (b, 3, 4 * h, 4 * w)
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_decode_selected_skips_only_low_iou_prompts(tiny, compiled):
    rng = np.random.default_rng(6)  # local, as above
    pred = SamPredictor(tiny, Settings(decoder_graphs=compiled == "1", decode_chunk=4))
    pred.set_embedding(
        ImageEmbedding(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32), (96, 128), (96, 128))
    )
    pts = rng.uniform(0, 96, (9, 1, 2)).astype(np.float32)
    lbs = np.ones((9, 1), np.int32)
    low_all, iou_all = (t.asnumpy() for t in pred.decode(pts, lbs))
    threshold = np.float32(np.median(iou_all.max(1)))
    iou, selected, low = pred.decode_selected(pts, lbs, min_iou=threshold)
    np.testing.assert_array_equal(iou, iou_all)
    want = np.flatnonzero((iou_all > threshold).any(1))
    assert 0 < len(want) < 9  # some prompts are skipped, some kept
    np.testing.assert_array_equal(selected, want)
    assert rel_err(low.asnumpy(), low_all[want]) <= 1e-6
    # Nothing above the threshold: no masks computed at all.
    iou, selected, low = pred.decode_selected(pts, lbs, min_iou=np.float32(iou_all.max()))
    assert len(selected) == 0 and low.shape == (0, 3, 32, 32)


def _meta_attention(attn, q, k, v) -> np.ndarray:
    """Meta's order in float64: project every token, attend per head, project back."""
    p = {n: t.asnumpy().astype(np.float64) for n, t in attn.parameters_and_names()}

    def linear(x, name):
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def heads(x):
        b, n, c = x.shape
        return x.reshape(b, n, attn.num_heads, -1).transpose(0, 2, 1, 3)

    qh, kh, vh = heads(linear(q, "q_proj")), heads(linear(k, "k_proj")), heads(linear(v, "v_proj"))
    s = qh @ kh.swapaxes(-1, -2) / attn.norm_scale
    s = np.exp(s - s.max(-1, keepdims=True))
    out = (s / s.sum(-1, keepdims=True)) @ vh
    b, h, n, c = out.shape
    return linear(out.transpose(0, 2, 1, 3).reshape(b, n, h * c), "out_proj")


@pytest.mark.parametrize(
    "shapes",
    [
        ((3, 7), (3, 300)),  # tokens -> image, each prompt with its own image tokens
        ((3, 7), (1, 300)),  # tokens -> image tokens shared by all prompts (Meta's order)
        ((3, 300), (3, 7)),  # image -> tokens, keys folded into the query projection
        ((1, 300), (3, 7)),  # image tokens shared: projected once
        ((2, 7), (2, 7)),  # token self-attention (Meta's order)
    ],
)
def test_reassociated_attention_matches_meta_order(shapes):
    from napari_sam_ms.modeling.transformer import Attention

    rng = np.random.default_rng(3)
    attn = Attention(64, 4, downsample_rate=2)  # internal width 32: 4 heads x 7 tokens < 32
    for p in attn.get_parameters():  # non-zero biases: the key bias must cancel
        p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    (bq, nq), (bk, nk) = shapes
    q = rng.normal(0, 1, (bq, nq, 64)).astype(np.float32)
    k = rng.normal(0, 1, (bk, nk, 64)).astype(np.float32)
    v = rng.normal(0, 1, (bk, nk, 64)).astype(np.float32)
    expected = _meta_attention(attn, q, k, v)
    for fn in (attn, ms.jit(attn.construct)):
        got = fn(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v)).asnumpy()
        assert got.shape == expected.shape
        assert rel_err(got, expected) < 1e-5


def test_gelu_is_the_exact_erf_gelu():
    from scipy.special import erf

    from napari_sam_ms.modeling.common import GELU

    x = np.concatenate([np.linspace(-10, 10, 20001), np.random.default_rng(4).normal(0, 3, 20000)])
    x = x.astype(np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    got = GELU()(ms.Tensor(x)).asnumpy()
    # float32 round-off only (a few units in the last place)
    err = np.abs(got - exact)
    assert (err <= 3e-7 * np.maximum(np.abs(x), 3)).all()
    # the check can tell: the tanh approximation (not SAM's GELU) is far outside it
    tanh = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh - exact).max() > 100 * err.max()


def test_image_rows_give_the_same_tokens(tiny):
    """The transformer's image side made once per image (MaskDecoder.image_rows) gives the
    same outputs as the maps the decoder takes otherwise."""
    rng = np.random.default_rng(7)  # local, as above
    md, pe_layer = tiny.mask_decoder, tiny.prompt_encoder
    feats = ms.Tensor(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32))
    sparse = ms.Tensor(rng.normal(0, 1, (3, 2, 32)).astype(np.float32))
    dense = pe_layer.no_mask_embed.weight.reshape(1, -1, 1, 1)
    pe = pe_layer.get_dense_pe()
    rows, pe_rows = md.image_rows(feats, pe, dense)
    assert rows.shape == (1, 64, 32) and pe_rows.shape == (1, 64, 32)
    want = md.predict_tokens(feats, pe, sparse, dense, "multimask")
    got = md.predict_tokens(rows, pe_rows, sparse, dense, "multimask")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_single_click_compiled_follows_new_decoder_weights(tiny):
    """One click runs compiled with the image side kept per image; it matches op by op in
    a fresh predictor (nothing kept), also after the no-mask embedding changed (a decoder
    fine-tuned in place)."""
    rng = np.random.default_rng(8)  # local, as above
    emb = ImageEmbedding(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32), (96, 128), (96, 128))
    pred = SamPredictor(tiny, Settings(decoder_graphs=True))
    pred.set_embedding(emb)
    pt, lb = np.array([[40.0, 30.0]]), np.array([1])
    weight = tiny.prompt_encoder.no_mask_embed.weight
    old = weight.asnumpy().copy()
    results = []
    try:
        for _ in range(2):
            fast = pred.predict(pt, lb, return_logits=True)
            fresh = SamPredictor(tiny, Settings(decoder_graphs=False))
            fresh.set_embedding(emb)
            eager = fresh.predict(pt, lb, return_logits=True)
            for a, b in zip(fast, eager, strict=True):
                assert rel_err(a, b) <= 1e-5
            results.append(fast[0])
            weight.set_data(ms.Tensor(old + 0.5))
        assert not np.allclose(results[0], results[1])  # the new embedding was used
    finally:
        weight.set_data(ms.Tensor(old))


@pytest.mark.parametrize("factor", [2, 4])
def test_exact_factor_resize_matches_mindspore(factor):
    """The OpenCV resize of the low-res masks by SAM's factors, map by map, gives
    MindSpore's bilinear numbers (float round-off only) in the input's layout."""
    rng = np.random.default_rng(9)  # local, as above
    x = rng.normal(0, 3, (2, 300, 13, 17)).astype(np.float32)
    got = mask_post.resize_exact(x, factor)
    want = ms.ops.interpolate(
        ms.Tensor(x), size=(13 * factor, 17 * factor), mode="bilinear", align_corners=False
    ).asnumpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("band", [1, 5, 32])
@pytest.mark.parametrize("shape", ["landscape", "portrait", "square", "resized"])
def test_binary_masks_equal_thresholded_upscaling(tiny, band, shape, monkeypatch):
    """A click's boolean masks, upscaled and thresholded band by band, equal the thresholded
    full upscaling for landscape, portrait and square images; an image that was resized to
    the model's input (a second resize) takes the unbanded path."""
    calls = []
    banded = mask_post.resize_exact_above

    def spy(masks, factor, threshold, size):
        calls.append(size)
        return banded(masks, factor, threshold, size, band=band)

    monkeypatch.setattr(mask_post, "resize_exact_above", spy)
    s = tiny.img_size
    input_size = {"landscape": (s * 3 // 4 - 1, s), "portrait": (s, s * 2 // 3 + 1)}.get(
        shape, (s, s)
    )
    original_size = (s * 3 // 2, s * 3 // 2) if shape == "resized" else input_size
    rng = np.random.default_rng(14)  # local, as above
    side = tiny.prompt_encoder.mask_input_size[0]
    low = rng.normal(0, 3, (2, 3, side, side)).astype(np.float32)
    low[0, 0] = 0.0  # values at the threshold itself stay False
    want = mask_post.upscale_masks(low, s, input_size, original_size) > tiny.mask_threshold
    got = mask_post.binary_masks(low, s, input_size, original_size, tiny.mask_threshold)
    assert got.dtype == bool and got.flags.c_contiguous
    assert got.shape == want.shape == (2, 3) + original_size
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    assert calls == ([] if shape == "resized" else [input_size])


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(4, 4, 0), (3, 1, 1), (1, 1, 0)])
def test_conv2d_products_match_direct_convolution(batch, kernel, stride, padding):
    """SAM's convolutions as products (patchify, 3x3 "same" through unfold, 1x1; one 2-D
    product for a single image) give MindSpore's direct convolution."""
    from napari_sam_ms.modeling.common import Conv2d

    rng = np.random.default_rng(12)  # local, as above
    conv = Conv2d(6, 5, kernel, stride=stride, padding=padding)
    x = ms.Tensor(rng.normal(0, 1, (batch, 6, 16, 12)).astype(np.float32))
    want = ms.ops.conv2d(x, conv.weight, stride=stride, padding=padding, pad_mode="pad")
    want = (want + conv.bias.reshape(1, -1, 1, 1)).asnumpy()
    got = conv(x).asnumpy()
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5


def test_transformer_output_tokens_are_the_first_rows(tiny):
    """The mask decoder asks the two-way transformer for its output tokens only: their
    states and the image tokens equal the first rows of the full result."""
    rng = np.random.default_rng(13)  # local, as above
    tr = tiny.mask_decoder.transformer
    c = tr.embedding_dim
    image = ms.Tensor(rng.normal(0, 1, (2, 8 * 8, c)).astype(np.float32))
    pe = ms.Tensor(rng.normal(0, 1, (1, 8 * 8, c)).astype(np.float32))
    tokens = ms.Tensor(rng.normal(0, 1, (2, 7, c)).astype(np.float32))
    full_q, full_k = (t.asnumpy() for t in tr(image, pe, tokens))
    q, k = (t.asnumpy() for t in tr(image, pe, tokens, 5))
    assert full_q.shape == (2, 7, c) and q.shape == (2, 5, c)
    assert rel_err(q, full_q[:, :5]) <= 1e-6
    np.testing.assert_array_equal(k, full_k)
