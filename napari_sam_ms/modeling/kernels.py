"""Speed kernels of the model: the same sums as Meta's PyTorch ops, in forms MindSpore runs fast.

Every ``construct`` in :mod:`napari_sam_ms.modeling` computes Meta's arithmetic; where the
direct MindSpore op is slow (on CPU in particular) it calls one of the named kernels below
instead. Each is a plain function of Tensors with static shapes, so it runs op by op and
inside compiled graphs alike. ``docs/performance.md`` has the measurements.
"""

from __future__ import annotations

from mindspore import Tensor, ops

# Rational fit of erf on [-4, 4] for float32 (odd numerator, even denominator in x^2; the
# coefficients Eigen and XLA use for float erf). Beyond |x| = 4, erf is +-1 in float32.
ERF_NUM = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
ERF_DEN = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)


def erf(x: Tensor) -> Tensor:
    """erf(x) in float32 from the rational fit :data:`ERF_NUM` / :data:`ERF_DEN` (largest
    error 4.2e-7 against float64 on [-5, 5]).

    Only products, sums, a reciprocal and a clip, so graph kernel fusion can fuse it (it
    leaves divisions and MindSpore's Erf kernel out of its kernels).
    """
    x = ops.clip_by_value(x, -4.0, 4.0)
    x2 = x * x
    p = ERF_NUM[-1]
    for c in ERF_NUM[-2::-1]:
        p = p * x2 + c
    q = ERF_DEN[-1]
    for c in ERF_DEN[-2::-1]:
        q = q * x2 + c
    return x * p * ops.reciprocal(q)


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU as ``torch.nn.GELU()``: ``x * 0.5 * (1 + erf(x * sqrt(1/2)))`` with
    :func:`erf`."""
    return x * 0.5 * (1.0 + erf(x * 0.7071067811865476))


def layer_norm_last(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last axis (biased variance, as torch), its two means computed as
    matrix products with a column of 1/C (faster than reductions over a short last axis)."""
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    ones = ops.full((c, 1), 1.0 / c, dtype=x.dtype)
    d = rows - ops.matmul(rows, ones)
    var = ops.matmul(d * d, ones)
    y = d * ops.rsqrt(var + eps) * weight + bias  # as torch: rsqrt, not a division
    return y.reshape(x.shape)


def conv2d(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``torch.nn.functional.conv2d`` without bias for SAM's geometries, as matrix products.

    Patchify convolutions (kernel == stride) go through :func:`conv2d_patches`, "same"
    convolutions (stride 1, padding (k-1)/2, e.g. 1x1 and 3x3) through :func:`conv2d_same`;
    other geometries use ``ops.conv2d``.
    """
    k = weight.shape[-1]
    h, w = x.shape[2], x.shape[3]
    if k == stride and padding == 0 and h % k == 0 and w % k == 0:
        return conv2d_patches(x, weight)
    if stride == 1 and 2 * padding == k - 1:
        return conv2d_same(x, weight, padding)
    return ops.conv2d(x, weight, stride=stride, padding=padding, pad_mode="pad")


def conv2d_patches(x: Tensor, weight: Tensor) -> Tensor:
    """Convolution with non-overlapping k x k patches (stride k) as one 2-D product:
    (B, C, H/k, k, W/k, k) -> (B*H/k*W/k, C*k*k) times the (C*k*k, O) weight."""
    b, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    cols = x.reshape(b, c, h // k, k, w // k, k).transpose(0, 2, 4, 1, 3, 5)
    y = ops.matmul(cols.reshape(-1, c * k * k), weight.reshape(o, -1).T)
    return y.reshape(b, h // k, w // k, o).transpose(0, 3, 1, 2)


def conv2d_same(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """Stride-1 "same" convolution: the k*k shifted views as columns (``ops.unfold``, with
    the padding; a reshape for 1x1), then one product with the (O, C*k*k) weight."""
    b, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    cols = x.reshape(b, c, h * w) if k == 1 else ops.unfold(x, k, 1, padding, 1)
    weight = weight.reshape(o, c * k * k)
    if b == 1:
        y = ops.matmul(weight, cols.reshape(c * k * k, h * w))
    else:
        y = ops.matmul(weight, cols)
    return y.reshape(b, o, h, w)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Transposed convolution with kernel == stride (torch layout: weight (C, O, k, k)) as
    one product and a pixel shuffle, exact for non-overlapping kernels."""
    b, c, h, w = x.shape
    o, k = weight.shape[1], weight.shape[-1]
    y = ops.matmul(x.reshape(b, c, h * w).swapaxes(1, 2), weight.reshape(c, -1))
    y = y.reshape(b, h, w, o, k, k).transpose(0, 3, 1, 4, 2, 5).reshape(b, o, h * k, w * k)
    return y + bias.reshape(1, -1, 1, 1)


def conv_transpose2d_channels_last(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """:func:`conv_transpose2d` on channels-last pixels, without the shuffle.

    Args:
        x: (..., C) one row of channels per input pixel.
        weight: (C, O, k, k); bias: (O,).

    Returns:
        (..., k*k, O): the k x k output pixels of each input pixel, in row-major order
        (output pixel (k*i + di, k*j + dj) of input pixel (i, j) is ``[..., di*k + dj, :]``).
    """
    c = x.shape[-1]
    o, k = weight.shape[1], weight.shape[-1]
    w = weight.reshape(c, o, k * k).swapaxes(1, 2).reshape(c, k * k * o)
    y = ops.matmul(x.reshape(-1, c), w).reshape(x.shape[:-1] + (k * k, o))
    return y + bias


def hypernetwork_masks(y: Tensor, hyper_in: Tensor, h: int, w: int, k1: int, k2: int) -> Tensor:
    """The hypernetwork product of Meta's mask decoder on the channels-last output of two
    k1-, then k2-fold transposed convolutions, shuffled into mask pixels at the end.

    Args:
        y: (B, h*w, k1*k1, k2*k2, C') upscaled channels-last pixels.
        hyper_in: (B, M, C') one hypernetwork output per mask.

    Returns:
        (B, M, h*k1*k2, w*k1*k2) mask logits.
    """
    b, m = hyper_in.shape[0], hyper_in.shape[1]
    y = y.reshape(b, -1, y.shape[-1])
    masks = ops.matmul(y, hyper_in.swapaxes(1, 2))  # (B, hw*k1*k1*k2*k2, M)
    # Pixel (i*k1*k2 + di1*k2 + di2, j*k1*k2 + dj1*k2 + dj2) of each mask.
    masks = masks.reshape(b, h, w, k1, k1, k2, k2, m).transpose(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, m, h * k1 * k2, w * k1 * k2)


def attention_chunk(batch_heads: int, n: int, budget_mb: float) -> int:
    """Heads (of ``batch_heads``) attended at once so that one chunk's (N, N) float32
    attention matrices stay under ``budget_mb`` (0: all at once)."""
    if budget_mb <= 0:
        return batch_heads
    per_head = n * n * 4
    return max(1, min(batch_heads, int(budget_mb * 2**20 // per_head)))


def attend(q: Tensor, k: Tensor, v: Tensor, rel, scale: float, h: int, w: int) -> Tensor:
    """softmax(q k^T * scale + decomposed relative-position bias) v for (BH, N, hd) inputs;
    ``rel`` is (rel_h, rel_w) as :meth:`Attention.rel_pos_terms` gives, or None."""
    attn = ops.matmul(q * scale, k.swapaxes(-2, -1))
    if rel is not None:
        bh = q.shape[0]
        rel_h, rel_w = rel
        attn = attn.reshape(bh, h, w, h, w) + rel_h.expand_dims(4) + rel_w.expand_dims(3)
        attn = attn.reshape(bh, h * w, h * w)
    attn = ops.softmax(attn, axis=-1)
    return ops.matmul(attn, v)


def attend_in_chunks(
    q: Tensor, k: Tensor, v: Tensor, rel, scale: float, h: int, w: int, chunk: int
) -> Tensor:
    """:func:`attend` ``chunk`` heads at a time, so that only one chunk's (N, N) attention
    matrices are alive; ``ops.depend`` keeps a compiled graph from running chunks side by
    side. The same numbers as one call."""
    if chunk >= q.shape[0]:
        return attend(q, k, v, rel, scale, h, w)
    parts = []
    pieces = [ops.split(t, chunk, 0) for t in (q, k, v)]
    rel_pieces = [ops.split(t, chunk, 0) for t in rel] if rel is not None else None
    for i in range(len(pieces[0])):
        qi = pieces[0][i] if not parts else ops.depend(pieces[0][i], parts[-1])
        rel_i = None if rel_pieces is None else (rel_pieces[0][i], rel_pieces[1][i])
        parts.append(attend(qi, pieces[1][i], pieces[2][i], rel_i, scale, h, w))
    return ops.concat(parts, 0)


__all__ = [
    "attend",
    "attend_in_chunks",
    "attention_chunk",
    "conv2d",
    "conv2d_patches",
    "conv2d_same",
    "conv_transpose2d",
    "conv_transpose2d_channels_last",
    "erf",
    "gelu",
    "hypernetwork_masks",
    "layer_norm_last",
]
