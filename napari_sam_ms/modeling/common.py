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

from . import kernels

# Meta uses nn.GELU (exact, erf-based) and nn.ReLU.
ACTIVATIONS = {"gelu": lambda: GELU(), "relu": lambda: nn.ReLU()}


class GELU(nn.Cell):
    """Exact (erf) GELU, as ``torch.nn.GELU()`` (computed by :func:`kernels.gelu`)."""

    def construct(self, x: Tensor) -> Tensor:
        return kernels.gelu(x)


def dense(in_features: int, out_features: int, bias: bool = True) -> Linear:
    """A linear layer with ``weight`` of shape (out, in) like ``torch.nn.Linear``."""
    return Linear(in_features, out_features, bias)


class Linear(nn.Cell):
    """``torch.nn.Linear``: ``weight`` (out, in) and ``bias`` (out,), initialised like
    ``mindspore.nn.Dense``. Inputs of any rank are flattened to one 2-D product (same sums
    as ``nn.Dense``, faster on CPU)."""

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
    """2D convolution with torch's layout: ``weight`` (out, in, k, k), optional ``bias``
    (computed by :func:`kernels.conv2d`)."""

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
        y = kernels.conv2d(x, self.weight, self.stride, self.padding)
        if self.has_bias:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y


class ConvTranspose2d(nn.Cell):
    """Transposed convolution with kernel == stride (SAM's 2x upscaling), torch layout:
    ``weight`` (in, out, k, k) and ``bias`` (out,) (computed by
    :func:`kernels.conv_transpose2d`)."""

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
        return kernels.conv_transpose2d(x, self.weight, self.bias)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same on channels-last pixels (..., C), without the pixel shuffle: (..., k*k, O)
        (see :func:`kernels.conv_transpose2d_channels_last`)."""
        return kernels.conv_transpose2d_channels_last(x, self.weight, self.bias)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, with torch's parameter names ``weight`` and ``bias``
    (computed by :func:`kernels.layer_norm_last`)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(normalized_shape, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(normalized_shape, np.float32)), name="bias")
        self.eps = eps

    def construct(self, x: Tensor) -> Tensor:
        return kernels.layer_norm_last(x, self.weight, self.bias, self.eps)


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
        return kernels.layer_norm_last(x, self.weight, self.bias, self.eps)


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
