"""The ViT image encoder (mirrors ``segment_anything/modeling/image_encoder.py``).

Windowed and global attention blocks with decomposed relative positional bias, then a
convolutional neck to ``out_chans`` channels. Shapes are static, so every cell here
compiles with ``ms.jit``.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from . import kernels
from .common import Conv2d, LayerNorm, LayerNorm2d, MLPBlock, dense


class ImageEncoderViT(nn.Cell):
    """Vision transformer backbone of SAM.

    Args:
        img_size: input side length (the image is padded to a square of this size).
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / embed_dim.
        out_chans: channels of the output embedding (the prompt embedding width).
        qkv_bias: add a bias to the query/key/value projection.
        norm_eps: LayerNorm epsilon inside the blocks (Meta: 1e-6).
        act: activation name of the block MLPs.
        use_abs_pos: add a learned absolute positional embedding.
        use_rel_pos: add decomposed relative positional bias to attention.
        window_size: window side for the non-global blocks.
        global_attn_indexes: indexes of the blocks that attend globally.
        attn_chunk_mb: memory of one chunk of attention heads (not in Meta's model: heads
            are attended a few at a time within this budget; 0 = all at once).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        act: str = "gelu",
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        attn_chunk_mb: float = 64.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.use_abs_pos = use_abs_pos
        if use_abs_pos:
            self.pos_embed = Parameter(
                Tensor(np.zeros((1, grid, grid, embed_dim), np.float32)), name="pos_embed"
            )
        self.blocks = nn.CellList(
            [
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_eps=norm_eps,
                    act=act,
                    use_rel_pos=use_rel_pos,
                    window_size=window_size if i not in global_attn_indexes else 0,
                    input_size=(grid, grid),
                    attn_chunk_mb=attn_chunk_mb,
                )
                for i in range(depth)
            ]
        )
        self.neck = nn.SequentialCell(
            Conv2d(embed_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding plus absolute positions: (B, 3, S, S) -> (B, S/p, S/p, C)."""
        x = self.patch_embed(x)
        if self.use_abs_pos:
            x = x + self.pos_embed
        return x

    def construct(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.transpose(0, 3, 1, 2))


class Block(nn.Cell):
    """Transformer block with optional window attention and a residual MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        act: str = "gelu",
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        attn_chunk_mb: float = 64.0,
    ) -> None:
        # The constructor arguments: a block of the same kind can be rebuilt from them
        # (the engine compiles one such block per kind and runs every block through it).
        kind = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.kind = {**kind, "input_size": None if input_size is None else tuple(input_size)}
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            attn_chunk_mb=attn_chunk_mb,
        )
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act)
        self.window_size = window_size

    def construct(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Cell):
    """Multi-head attention over a (B, H, W, C) token grid, with relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
        attn_chunk_mb: float = 64.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_chunk_mb = attn_chunk_mb
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = dense(dim, dim * 3, bias=qkv_bias)
        self.proj = dense(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required with relative positional encoding")
            h, w = input_size
            self.rel_pos_h = Parameter(
                Tensor(np.zeros((2 * h - 1, head_dim), np.float32)), name="rel_pos_h"
            )
            self.rel_pos_w = Parameter(
                Tensor(np.zeros((2 * w - 1, head_dim), np.float32)), name="rel_pos_w"
            )
            # Index tables of get_rel_pos for q_size == k_size (the only case SAM builds).
            self.idx_h = Tensor(_rel_index(h), ms.int32)
            self.idx_w = Tensor(_rel_index(w), ms.int32)

    def construct(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        n = h * w
        heads = self.num_heads
        # (B, N, 3, heads, hd) -> (3, B*heads, N, hd)
        qkv = self.qkv(x).reshape(b, n, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        qkv = qkv.reshape(3, b * heads, n, -1)
        q, k, v = ops.unstack(qkv, 0)
        rel = self.rel_pos_terms(q, h, w) if self.use_rel_pos else None
        chunk = kernels.attention_chunk(b * heads, n, self.attn_chunk_mb)
        x = kernels.attend_in_chunks(q, k, v, rel, self.scale, h, w, chunk)
        x = x.reshape(b, heads, h, w, -1).transpose(0, 2, 3, 1, 4)
        return self.proj(x.reshape(b, h, w, -1))

    def rel_pos_terms(self, q: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """The decomposed relative-position terms of MViTv2 (as Meta's SAM), per query:
        rel_h (BH, h, w, kh) and rel_w (BH, h, w, kw), to add along the key rows/columns."""
        rh = ops.gather(self.rel_pos_h, self.idx_h, 0)  # (qh, kh, c)
        rw = ops.gather(self.rel_pos_w, self.idx_w, 0)  # (qw, kw, c)
        bh = q.shape[0]
        c = q.shape[-1]
        r_q = q.reshape(bh, h, w, c)
        # einsum("bhwc,hkc->bhwk"): batch over h.
        rel_h = ops.matmul(r_q.transpose(1, 0, 2, 3).reshape(h, bh * w, c), rh.swapaxes(1, 2))
        rel_h = rel_h.reshape(h, bh, w, h).transpose(1, 0, 2, 3)
        # einsum("bhwc,wkc->bhwk"): batch over w.
        rel_w = ops.matmul(r_q.transpose(2, 0, 1, 3).reshape(w, bh * h, c), rw.swapaxes(1, 2))
        rel_w = rel_w.reshape(w, bh, h, w).transpose(1, 2, 0, 3)
        return rel_h, rel_w


def _rel_index(size: int) -> np.ndarray:
    """Indexes into a (2*size-1, C) relative-position table for every (query, key) pair."""
    coords = np.arange(size)
    return (coords[:, None] - coords[None, :]) + (size - 1)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into (B*nW, ws, ws, C) windows, zero-padding H and W up first."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0:
        x = ops.concat((x, ops.zeros((b, pad_h, w, c), x.dtype)), 1)
    if pad_w > 0:
        x = ops.concat((x, ops.zeros((b, h + pad_h, pad_w, c), x.dtype)), 2)
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Merge windows back into (B, H, W, C) and drop the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h:
        x = ops.split(x, (h, hp - h), 1)[0]
    if wp > w:
        x = ops.split(x, (w, wp - w), 2)[0]
    return x


class PatchEmbed(nn.Cell):
    """Image to patch embedding: a strided convolution, output (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def construct(self, x: Tensor) -> Tensor:
        return self.proj(x).transpose(0, 2, 3, 1)
