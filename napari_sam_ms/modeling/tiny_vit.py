"""MobileSAM's TinyViT image encoder, ``vit_t`` (mirrors ``mobile_sam/modeling/tiny_vit_sam.py``).

A convolutional stem and an MBConv stage at 1/4 resolution, then stages of windowed
attention blocks (attention with a learned bias per relative offset, a depthwise "local"
convolution, an MLP) entered through patch-merging convolutions, and SAM's neck. Attribute
names equal MobileSAM's checkpoint keys, BatchNorm statistics included. The classification
head (``norm_head``, ``head``) is not built: SAM never runs it. BatchNorm runs as in
``eval()`` (running statistics), folded into the convolution's weights.
"""

from __future__ import annotations

import itertools

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .common import GELU, Conv2d, LayerNorm, LayerNorm2d, dense
from .image_encoder import window_partition, window_unpartition
from .tiny_vit_convs import BatchNorm2d, Conv2dBN, grouped_conv2d


class PatchEmbed(nn.Cell):
    """Two stride-2 3x3 convolutions (``seq``): (B, 3, S, S) -> (B, C, S/4, S/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        n = embed_dim
        self.seq = nn.SequentialCell(
            Conv2dBN(in_chans, n // 2, 3, 2, 1), GELU(), Conv2dBN(n // 2, n, 3, 2, 1)
        )

    def construct(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Cell):
    """Inverted residual: 1x1 expansion, 3x3 depthwise, 1x1 projection, on (B, C, H, W)."""

    def __init__(self, in_chans: int, out_chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2dBN(in_chans, hidden, ks=1)
        self.act1 = GELU()
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = GELU()
        self.conv3 = Conv2dBN(hidden, out_chans, ks=1, bn_weight_init=0.0)
        self.act3 = GELU()

    def construct(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.act3(self.conv3(x) + shortcut)


class PatchMerging(nn.Cell):
    """1x1 conv, 3x3 depthwise conv (stride ``stride``), 1x1 conv: tokens (B, H*W, C) or a
    map (B, C, H, W) in, tokens (B, H'*W', out_dim) out."""

    def __init__(
        self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int = 2
    ) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.act = GELU()
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)

    def construct(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.reshape(x.shape[0], h, w, -1).transpose(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        b, c = x.shape[0], x.shape[1]
        return x.reshape(b, c, -1).transpose(0, 2, 1)


class ConvLayer(nn.Cell):
    """The first stage: MBConv blocks on (B, C, H, W), then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        out_dim: int,
        conv_expand_ratio: float = 4.0,
        downsample_stride: int | None = 2,
    ) -> None:
        super().__init__()
        self.blocks = nn.CellList([MBConv(dim, dim, conv_expand_ratio) for _ in range(depth)])
        self.downsample = None
        if downsample_stride is not None:
            self.downsample = PatchMerging(input_resolution, dim, out_dim, downsample_stride)

    def construct(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def mbconv(self, x: Tensor) -> Tensor:
        """The MBConv blocks only (the map before the patch merging)."""
        for blk in self.blocks:
            x = blk(x)
        return x


class Mlp(nn.Cell):
    """LayerNorm, then two linear layers with a GELU between (``norm``, ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.norm = LayerNorm(in_features)
        self.fc1 = dense(in_features, hidden_features)
        self.fc2 = dense(hidden_features, in_features)
        self.act = GELU()

    def construct(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def attention_bias_index(resolution: tuple[int, int]) -> tuple[np.ndarray, int]:
    """TinyViT's bias table index: for every (query, key) pair of a window, the number of
    the pair's absolute offset (|dy|, |dx|) in first-seen order; and the number of offsets.
    (MobileSAM's non-persistent buffer ``attention_bias_idxs``; here a constant.)"""
    points = list(itertools.product(range(resolution[0]), range(resolution[1])))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return np.asarray(idxs, np.int32).reshape(n, n), len(offsets)


class Attention(nn.Cell):
    """Multi-head self-attention over (B, N, C) tokens of one window, with its own
    LayerNorm (``norm``) and a learned bias per head and relative offset
    (``attention_biases``)."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = LayerNorm(dim)
        self.qkv = dense(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = dense(self.dh, dim)
        idxs, n_offsets = attention_bias_index(tuple(resolution))
        self.attention_biases = Parameter(
            Tensor(np.zeros((num_heads, n_offsets), np.float32)), name="attention_biases"
        )
        self.n = idxs.shape[0]
        self.bias_idxs = Tensor(idxs.reshape(-1), ms.int32)

    def construct(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads = self.num_heads
        qkv = self.qkv(self.norm(x))
        if self.d == self.key_dim:  # (B, N, heads, [q|k|v]) -> (3, B, heads, N, d)
            qkv = qkv.reshape(b, n, heads, 3, self.d).transpose(3, 0, 2, 1, 4)
            q, k, v = ops.unstack(qkv, 0)
        else:
            parts = ops.split(qkv.reshape(b, n, heads, -1), (self.key_dim, self.key_dim, self.d), 3)
            q, k, v = (t.transpose(0, 2, 1, 3) for t in parts)
        bias = ops.gather(self.attention_biases, self.bias_idxs, 1).reshape(heads, n, n)
        attn = ops.matmul(q, k.swapaxes(-2, -1)) * self.scale + bias
        attn = ops.softmax(attn, axis=-1)
        x = ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, self.dh)
        return self.proj(x)


class TinyViTBlock(nn.Cell):
    """Windowed attention (zero-padded to whole windows), a depthwise local convolution,
    an MLP; on (B, H*W, C) tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        if window_size <= 0 or dim % num_heads:
            raise ValueError("window_size must be positive and num_heads must divide dim")
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        ws = (window_size, window_size)
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1, resolution=ws)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, stride=1, pad=pad, groups=dim)

    def construct(self, x: Tensor) -> Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        res_x = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            windows, pad_hw = window_partition(x.reshape(b, h, w, c), ws)
            x = self.attn(windows.reshape(-1, ws * ws, c))
            x = window_unpartition(x.reshape(-1, ws, ws, c), ws, pad_hw, (h, w)).reshape(b, n, c)
        x = res_x + x
        x = self.local_conv(x.transpose(0, 2, 1).reshape(b, c, h, w))
        # As rows (B*N, C): graph kernel fusion (MindSpore 2.10 CPU) misreads the transposed
        # (B, N, C) tokens where they feed both the residual sum and the MLP.
        rows = x.reshape(b, c, n).transpose(0, 2, 1).reshape(b * n, c)
        return (rows + self.mlp(rows)).reshape(b, n, c)


class BasicLayer(nn.Cell):
    """One attention stage: TinyViT blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        downsample_stride: int | None = 2,
    ) -> None:
        super().__init__()
        self.blocks = nn.CellList(
            [
                TinyViTBlock(
                    dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size
                )
                for _ in range(depth)
            ]
        )
        self.downsample = None
        if downsample_stride is not None:
            self.downsample = PatchMerging(input_resolution, dim, out_dim, downsample_stride)

    def construct(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def stage_resolutions(
    img_size: int, num_layers: int, merge_strides: tuple[int, ...] | None = None
) -> list[int]:
    """Token grid side of each stage: 1/4 of the image, then divided by the stride of each
    patch merging (:func:`merge_strides_of`; MobileSAM's: 2, except the one into the last
    stage, keyed there on the last width being 320, 448 or 576); vit_t: ``[256, 128, 64, 64]``."""
    strides = merge_strides_of(num_layers, merge_strides)
    sides = [img_size // 4]
    for stride in strides:
        sides.append((sides[-1] - 1) // stride + 1)
    return sides


def merge_strides_of(num_layers: int, merge_strides: tuple[int, ...] | None) -> tuple[int, ...]:
    """The strides of the ``num_layers - 1`` patch mergings: as given, or MobileSAM's
    (2, ..., 2, 1) for None."""
    if merge_strides is None:
        return tuple(1 if i == num_layers - 1 else 2 for i in range(1, num_layers))
    strides = tuple(int(s) for s in merge_strides)
    if len(strides) != num_layers - 1 or min(strides, default=1) < 1:
        raise ValueError(f"need {num_layers - 1} positive merge strides, got {merge_strides}")
    return strides


class TinyViT(nn.Cell):
    """MobileSAM's image encoder: TinyViT without its classifier, plus SAM's neck.

    Args:
        img_size: input side length (the image is padded to a square of this size).
        in_chans: input channels.
        embed_dims: token width of each stage.
        depths: blocks per stage.
        num_heads: attention heads of each stage (the first, convolutional, has none).
        window_sizes: attention window side of each stage.
        mlp_ratio: MLP hidden width / token width.
        mbconv_expand_ratio: MBConv hidden width / width in the first stage.
        local_conv_size: kernel side of the blocks' depthwise convolution.
        out_chans: channels of the output embedding (the prompt embedding width).
        merge_strides: stride of the patch merging after each stage but the last (None:
            MobileSAM's 2, ..., 2, 1).
        return_early: also return the first stage's MBConv output (B, embed_dims[0], S/4,
            S/4), the early high-resolution features of HQ-SAM-style fusion.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        merge_strides: tuple[int, ...] | None = None,
        return_early: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        n_layers = len(depths)
        sides = stage_resolutions(img_size, n_layers, merge_strides)
        strides = merge_strides_of(n_layers, merge_strides)
        self.return_early = return_early
        self.merge_strides, self.sides = strides, tuple(sides)
        self.embed_dims, self.depths = tuple(embed_dims), tuple(depths)
        self.embedding_size = sides[-1]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        layers = []
        for i in range(n_layers):
            # the patch merging ending stage i keeps the grid before the last stage
            stride = None if i == n_layers - 1 else strides[i]
            common = dict(
                dim=embed_dims[i],
                input_resolution=(sides[i], sides[i]),
                depth=depths[i],
                out_dim=embed_dims[min(i + 1, n_layers - 1)],
                downsample_stride=stride,
            )
            if i == 0:
                layers.append(ConvLayer(conv_expand_ratio=mbconv_expand_ratio, **common))
            else:
                layers.append(
                    BasicLayer(
                        num_heads=num_heads[i],
                        window_size=window_sizes[i],
                        mlp_ratio=mlp_ratio,
                        local_conv_size=local_conv_size,
                        **common,
                    )
                )
        self.layers = nn.CellList(layers)
        self.neck = nn.SequentialCell(
            Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def to_map(self, x: Tensor) -> Tensor:
        """The last stage's tokens (B, g*g, C) as the neck's input map (B, C, g, g)."""
        g = self.embedding_size
        return x.reshape(x.shape[0], g, g, -1).transpose(0, 3, 1, 2)

    def construct(self, x: Tensor) -> Tensor:
        if self.return_early:
            return self.forward_early(x)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(self.to_map(x))

    def forward_early(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The embedding and the first stage's MBConv output (see ``return_early``)."""
        first = self.layers[0]
        early = first.mbconv(self.patch_embed(x))
        x = early if first.downsample is None else first.downsample(early)
        for i in range(1, len(self.layers)):
            x = self.layers[i](x)
        return self.neck(self.to_map(x)), early


__all__ = [
    "BatchNorm2d",
    "Conv2dBN",
    "TinyViT",
    "TinyViTBlock",
    "attention_bias_index",
    "grouped_conv2d",
    "merge_strides_of",
    "stage_resolutions",
]
