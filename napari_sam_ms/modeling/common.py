"""Building blocks shared by SAM's parts (mirrors ``segment_anything/modeling/common.py``).

Parameter names follow Meta's PyTorch modules exactly (``weight``/``bias``), so official
checkpoints map onto these cells key for key.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

# Meta uses nn.GELU (exact, erf-based) and nn.ReLU.
ACTIVATIONS = {"gelu": lambda: GELU(), "relu": lambda: nn.ReLU()}


class GELU(nn.Cell):
    """Exact (erf) GELU, as ``torch.nn.GELU()``; works on CPU, GPU and Ascend."""

    def construct(self, x: Tensor) -> Tensor:
        return ops.gelu(x, approximate="none")


def dense(in_features: int, out_features: int, bias: bool = True) -> nn.Dense:
    """A linear layer with ``weight`` of shape (out, in) like ``torch.nn.Linear``."""
    return nn.Dense(in_features, out_features, has_bias=bias)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
) -> nn.Conv2d:
    """A ``torch.nn.Conv2d``-equivalent convolution (explicit zero padding, NCHW)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        pad_mode="pad",
        padding=padding,
        has_bias=bias,
    )


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, with torch's parameter names ``weight`` and ``bias``.

    Uses the ``ops.LayerNorm`` primitive, which has kernels on every device (the
    ``LayerNormExt`` route fails on CPU in MindSpore 2.10).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(normalized_shape, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(normalized_shape, np.float32)), name="bias")
        self.eps = eps
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x: Tensor) -> Tensor:
        return self.norm(x, self.weight, self.bias)[0]


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
