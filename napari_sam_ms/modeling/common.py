"""Building blocks shared by SAM's parts (mirrors ``segment_anything/modeling/common.py``).

Parameter names follow Meta's PyTorch modules exactly (``weight``/``bias``), so official
checkpoints map onto these cells key for key.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Normal, Uniform, initializer

# Meta uses nn.GELU (exact, erf-based) and nn.ReLU.
ACTIVATIONS = {"gelu": lambda: GELU(), "relu": lambda: nn.ReLU()}


# Rational fit of erf on [-4, 4] for float32 (odd numerator, even denominator in x^2; the
# coefficients Eigen and XLA use for float erf). Beyond |x| = 4, erf is +-1 in float32.
_ERF_NUM = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
_ERF_DEN = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)


def erf(x: Tensor) -> Tensor:
    """erf(x) in float32 from :data:`_ERF_NUM` / :data:`_ERF_DEN` (largest error 4.2e-7
    against float64 on [-5, 5]).

    Only products, sums, a reciprocal and a clip: MindSpore 2.10's CPU Erf kernel takes
    ~10 ns per value and is not fused, while this is. Graph kernel fusion leaves divisions
    out of its kernels (a separate, slow Div), but fuses ``reciprocal``: GELU of a
    (65536, 32) tensor took 0.8 ms fused with the reciprocal, 3.6 ms with a division,
    6.8 ms unfused, 19 ms with ``ops.erf``.
    """
    x = ops.clip_by_value(x, -4.0, 4.0)
    x2 = x * x
    p = _ERF_NUM[-1]
    for c in _ERF_NUM[-2::-1]:
        p = p * x2 + c
    q = _ERF_DEN[-1]
    for c in _ERF_DEN[-2::-1]:
        q = q * x2 + c
    return x * p * ops.reciprocal(q)


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU as ``torch.nn.GELU()``: ``x * 0.5 * (1 + erf(x * sqrt(1/2)))`` with
    :func:`erf` (against torch's GELU over 2.2 M values: largest difference 1.4e-6, ops.gelu
    1.2e-6)."""
    return x * 0.5 * (1.0 + erf(x * 0.7071067811865476))


class GELU(nn.Cell):
    """Exact (erf) GELU, as ``torch.nn.GELU()`` (computed by :func:`gelu`)."""

    def construct(self, x: Tensor) -> Tensor:
        return gelu(x)


def dense(in_features: int, out_features: int, bias: bool = True) -> Linear:
    """A linear layer with ``weight`` of shape (out, in) like ``torch.nn.Linear``."""
    return Linear(in_features, out_features, bias)


class Linear(nn.Cell):
    """``torch.nn.Linear``: ``weight`` (out, in) and ``bias`` (out,), initialised like
    ``mindspore.nn.Dense``. Inputs of any rank are flattened to one 2-D product (on CPU about
    twice as fast as ``nn.Dense`` on 3-D inputs, same sums)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / in_features**0.5
        self.weight = Parameter(
            initializer(HeUniform(math.sqrt(5)), (out_features, in_features), ms.float32),
            name="weight",
        )
        self.has_bias = bias
        if bias:
            self.bias = Parameter(
                initializer(Uniform(bound), (out_features,), ms.float32), name="bias"
            )
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()

    def construct(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.matmul(x.reshape(-1, self.in_features), self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return y.reshape(lead + (self.out_features,))


class Conv2d(nn.Cell):
    """2D convolution with torch's layout: ``weight`` (out, in, k, k), optional ``bias``.

    SAM's convolutions are patchify (kernel == stride), 1x1 and 3x3 with padding 1. They are
    computed as one matrix product over gathered patches: the same sums as a convolution,
    and on CPU far faster than MindSpore 2.10's direct kernels (a 16x16/16 patch embedding
    took ~40 s there, ~0.5 s here). Other geometries use ``ops.conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        k = kernel_size
        bound = 1.0 / (in_channels * k * k) ** 0.5
        self.weight = Parameter(
            initializer(Uniform(bound), (out_channels, in_channels, k, k), ms.float32),
            name="weight",
        )
        self.has_bias = bias
        if bias:
            self.bias = Parameter(
                initializer(Uniform(bound), (out_channels,), ms.float32), name="bias"
            )
        self.kernel_size, self.stride, self.padding = k, stride, padding
        self.out_channels = out_channels

    def construct(self, x: Tensor) -> Tensor:
        k, s, p = self.kernel_size, self.stride, self.padding
        b, c, h, w = x.shape
        o = self.out_channels
        if k == s and p == 0 and h % k == 0 and w % k == 0:
            # Non-overlapping patches: (B, C, H/k, k, W/k, k) -> (B*H/k*W/k, C*k*k), one 2-D
            # product (a 4-D one broadcasts the weight first).
            cols = x.reshape(b, c, h // k, k, w // k, k).transpose(0, 2, 4, 1, 3, 5)
            y = ops.matmul(cols.reshape(-1, c * k * k), self.weight.reshape(o, -1).T)
            y = y.reshape(b, h // k, w // k, o).transpose(0, 3, 1, 2)
        elif s == 1 and 2 * p == k - 1:
            # "Same" convolution: the k*k shifted views as columns (unfold: im2col, with the
            # padding), then one product. For vit_b's neck on CPU, unfold and a 2-D product
            # take ~40 instead of ~200 ms (slicing nine views, a broadcast product), and
            # give the same numbers.
            cols = x.reshape(b, c, h * w) if k == 1 else ops.unfold(x, k, 1, p, 1)
            weight = self.weight.reshape(o, c * k * k)
            if b == 1:
                y = ops.matmul(weight, cols.reshape(c * k * k, h * w))
            else:
                y = ops.matmul(weight, cols)
            y = y.reshape(b, o, h, w)
        else:
            y = ops.conv2d(x, self.weight, stride=s, padding=p, pad_mode="pad")
        if self.has_bias:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y


class ConvTranspose2d(nn.Cell):
    """Transposed convolution with kernel == stride (SAM's 2x upscaling), torch layout:
    ``weight`` (in, out, k, k) and ``bias`` (out,). Computed as one matrix product and a
    pixel shuffle, which is exact for non-overlapping kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2) -> None:
        super().__init__()
        k = kernel_size
        bound = 1.0 / (out_channels * k * k) ** 0.5
        self.weight = Parameter(
            initializer(Uniform(bound), (in_channels, out_channels, k, k), ms.float32),
            name="weight",
        )
        self.bias = Parameter(initializer(Uniform(bound), (out_channels,), ms.float32), name="bias")
        self.k = k
        self.out_channels = out_channels

    def construct(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k, o = self.k, self.out_channels
        y = ops.matmul(x.reshape(b, c, h * w).swapaxes(1, 2), self.weight.reshape(c, -1))
        y = y.reshape(b, h, w, o, k, k).transpose(0, 3, 1, 4, 2, 5).reshape(b, o, h * k, w * k)
        return y + self.bias.reshape(1, -1, 1, 1)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same transposed convolution on channels-last pixels, without the shuffle.

        Args:
            x: (..., C) one row of channels per input pixel.

        Returns:
            (..., k*k, O): the k x k output pixels of each input pixel, in row-major order
            (output pixel (k*i + di, k*j + dj) of input pixel (i, j) is ``[..., di*k + dj, :]``).
        """
        c = x.shape[-1]
        k, o = self.k, self.out_channels
        w = self.weight.reshape(c, o, k * k).swapaxes(1, 2).reshape(c, k * k * o)
        y = ops.matmul(x.reshape(-1, c), w).reshape(x.shape[:-1] + (k * k, o))
        return y + self.bias


def layer_norm_last(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last axis (biased variance, as torch).

    The two means are matrix products with a column of 1/C: on CPU the reduction kernels
    over a short last axis are several times slower than a product (a (4096, 256) layer norm:
    2.7 ms with the LayerNorm primitive, 1.1 ms this way), and products exist on every device.
    """
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    ones = ops.full((c, 1), 1.0 / c, dtype=x.dtype)
    d = rows - ops.matmul(rows, ones)
    var = ops.matmul(d * d, ones)
    y = d * ops.rsqrt(var + eps) * weight + bias  # as torch: rsqrt, not a (slow) division
    return y.reshape(x.shape)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, with torch's parameter names ``weight`` and ``bias``
    (computed by :func:`layer_norm_last`)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(normalized_shape, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(normalized_shape, np.float32)), name="bias")
        self.eps = eps

    def construct(self, x: Tensor) -> Tensor:
        return layer_norm_last(x, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.Cell):
    """LayerNorm over the channel axis of an NCHW tensor (Meta's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")
        self.eps = eps

    def construct(self, x: Tensor) -> Tensor:
        u = x.mean(1, keep_dims=True)
        d = x - u
        s = (d * d).mean(1, keep_dims=True)
        x = d / ops.sqrt(s + self.eps)
        return self.weight.reshape(1, -1, 1, 1) * x + self.bias.reshape(1, -1, 1, 1)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same normalisation of channels-last pixels (..., C)."""
        return layer_norm_last(x, self.weight, self.bias, self.eps)


class MLPBlock(nn.Cell):
    """Two linear layers with an activation between them (``lin1``, ``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.lin1 = dense(embedding_dim, mlp_dim)
        self.lin2 = dense(mlp_dim, embedding_dim)
        self.act = ACTIVATIONS[act]()

    def construct(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Embedding(nn.Cell):
    """A learned table with torch's name ``weight`` (``torch.nn.Embedding`` layout)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = Parameter(
            initializer(Normal(sigma=1.0), (num_embeddings, embedding_dim), ms.float32),
            name="weight",
        )
