"""TinyViT's convolution parts (MobileSAM's ``Conv2d_BN``): bias-free convolutions as matrix
products and eval-mode BatchNorm folded into them. Split from :mod:`.tiny_vit`, which
re-exports every name here."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, initializer


def grouped_conv2d(x: Tensor, weight: Tensor, stride: int, padding: int, groups: int) -> Tensor:
    """``torch.nn.functional.conv2d`` without bias for ``groups`` 1 or C (depthwise), as
    matrix products: a 1x1 convolution is one product, others unfold the k*k shifted views
    (``ops.unfold``) first. Depthwise convolutions are one (1, k*k) x (k*k, HW) product per
    channel (MindSpore's grouped CPU convolution is ~10x slower here)."""
    b, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    if k == 1 and stride == 1 and groups == 1:
        return ops.matmul(weight.reshape(o, c), x.reshape(b, c, h * w)).reshape(b, o, h, w)
    cols = ops.unfold(x, k, 1, padding, stride)  # (B, C*k*k, Ho*Wo), channel-major
    if groups == 1:
        y = ops.matmul(weight.reshape(o, c * k * k), cols)
    elif groups == c == o:
        cols = cols.reshape(b * c, k * k, ho * wo)
        y = ops.matmul(ops.tile(weight.reshape(c, 1, k * k), (b, 1, 1)), cols)
    else:
        raise ValueError(f"groups must be 1 or the channel count, got {groups} for {c} channels")
    return y.reshape(b, o, ho, wo)


class BatchNorm2d(nn.Cell):
    """``torch.nn.BatchNorm2d`` state with torch's names, applied as in ``eval()``.

    The running statistics and ``num_batches_tracked`` are parameters without gradients, so
    that checkpoints map key for key; :meth:`scale_shift` gives the per-channel affine map
    ``x * scale + shift`` that the normalisation is in eval mode (torch's CPU kernel form).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, weight_init: float = 1.0) -> None:
        super().__init__()

        def param(value: np.ndarray, name: str, learned: bool = False) -> Parameter:
            return Parameter(Tensor(value.astype(np.float32)), name=name, requires_grad=learned)

        n = num_features
        self.weight = param(np.full(n, weight_init), "weight", True)
        self.bias = param(np.zeros(n), "bias", True)
        self.running_mean = param(np.zeros(n), "running_mean")
        self.running_var = param(np.ones(n), "running_var")
        # torch's int64 counter, unused in eval; float32 like every parameter here, so that
        # checkpoints of any writer load and save alike (the value is kept as it comes).
        self.num_batches_tracked = param(np.zeros(()), "num_batches_tracked")
        self.eps = eps

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (C,), with ``bn(x) == x * scale + shift``."""
        scale = self.weight * ops.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


class _ConvWeight(nn.Cell):
    """A bias-free convolution's ``weight`` (out, in/groups, k, k), torch layout."""

    def __init__(self, in_chans: int, out_chans: int, k: int, groups: int) -> None:
        super().__init__()
        shape = (out_chans, in_chans // groups, k, k)
        self.weight = Parameter(initializer(HeUniform(5**0.5), shape, ms.float32), name="weight")


class Conv2dBN(nn.Cell):
    """MobileSAM's ``Conv2d_BN``: a bias-free convolution ``c`` then BatchNorm ``bn``.

    The BatchNorm's per-channel scale is folded into the convolution weight and its shift
    added after (the same sums as convolving then normalising, one pass fewer).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = _ConvWeight(in_chans, out_chans, ks, groups)
        self.bn = BatchNorm2d(out_chans, weight_init=bn_weight_init)
        self.stride, self.pad, self.groups = stride, pad, groups

    def construct(self, x: Tensor) -> Tensor:
        scale, shift = self.bn.scale_shift()
        weight = self.c.weight * scale.reshape(-1, 1, 1, 1)
        y = grouped_conv2d(x, weight, self.stride, self.pad, self.groups)
        return y + shift.reshape(1, -1, 1, 1)


__all__ = ["BatchNorm2d", "Conv2dBN", "grouped_conv2d"]
