"""The ViT image encoder (mirrors ``segment_anything/modeling/image_encoder.py``).

Windowed and global attention blocks with decomposed relative positional bias, then a
convolutional neck to ``out_chans`` channels. Shapes are static, so every cell here
compiles with ``ms.jit``.
"""

from __future__ import annotations

import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .common import Conv2d, LayerNorm, LayerNorm2d, MLPBlock, dense

_ATTN_CHUNK_MB = float(os.environ.get("NAPARI_SAM_MS_ATTN_CHUNK_MB", "64"))
_STAGE_BLOCKS = int(os.environ.get("NAPARI_SAM_MS_STAGE_BLOCKS", "3"))


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

    def run_graphs(self, x: Tensor) -> Tensor:
        """The same as calling the encoder, run as compiled graphs (see :class:`BlockGraphs`).

        Built on first use (compiling takes seconds once per process and block kind); the
        graphs read the encoder's current weights at every call.
        """
        graphs = self.__dict__.get("_block_graphs")
        if graphs is None:
            graphs = BlockGraphs(self)
            # Stored outside MindSpore's cell registry: not a sub-cell, not in checkpoints.
            object.__setattr__(self, "_block_graphs", graphs)
        return graphs(x)


class BlockGraphs:
    """Runs an encoder as compiled graphs: one graph per *stage* kind, shared by its stages.

    A stage is a run of consecutive blocks that ends at a global block or after
    ``NAPARI_SAM_MS_STAGE_BLOCKS`` blocks (default 3; see :func:`stage_indexes`): vit_b's
    twelve blocks are four stages of (windowed, windowed, global), so one graph serves all.
    A private template per stage kind is compiled once and, before each stage, its blocks'
    weights are copied into it (``ops.assign``: ~3 ms per vit_b block). The patch embedding
    and the neck are compiled too. On CPU, graph kernel fusion is switched on while the
    graphs compile (:func:`napari_sam_ms.runtime.fused_compile`). Same arithmetic as
    op-by-op execution.

    Why stages and not one graph per block: MindSpore 2.10's CPU runtime runs a graph of at
    most 100 kernels in the calling thread, which hands every kernel to the two pool threads
    and busy-waits beside them; a windowed block alone is such a graph. A stage graph is
    larger and runs on MindSpore's actor thread, which computes a share itself (2-core Xeon,
    alternating processes: vit_b embedding medians 4.79-5.26 s vs 5.30-5.91 s per block).
    One graph over all blocks is avoided: compiling it needs more memory than a laptop has.
    """

    def __init__(self, encoder: ImageEncoderViT) -> None:
        from .. import runtime

        self._runtime = runtime
        self.encoder = encoder
        self.templates: dict[tuple, tuple[nn.Cell, list[Parameter], object]] = {}
        # Through plain functions: compiling the encoder's bound ``embed`` method itself
        # made every later graph that contains the encoder (e.g. a training step) return
        # its embedding channels-last (MindSpore 2.10; tested).
        self.embed = runtime.FusedGraph(_plain(encoder.embed))
        self.neck = runtime.FusedGraph(_plain(encoder.neck))

    def stages(self) -> list[list[Block]]:
        """The encoder's blocks grouped into the stages that run as one graph each."""
        blocks = list(self.encoder.blocks)
        flags = [blk.window_size == 0 for blk in blocks]
        return [[blocks[i] for i in run] for run in stage_indexes(flags, _STAGE_BLOCKS)]

    def _template(self, stage: list[Block]):
        key = tuple(tuple(sorted(blk.kind.items())) for blk in stage)
        if key not in self.templates:
            tmpl = _Stage([blk.kind for blk in stage])
            tmpl.set_train(False)
            params = list(tmpl.get_parameters())
            self.templates[key] = (tmpl, params, self._runtime.FusedGraph(tmpl.construct))
        return self.templates[key]

    def __call__(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for stage in self.stages():
            _, params, fn = self._template(stage)
            sources = (p for blk in stage for p in blk.get_parameters())
            for dst, src in zip(params, sources, strict=True):
                ops.assign(dst, src)
            x = fn(x)
        return self.neck(x.transpose(0, 3, 1, 2))


def _plain(fn):
    """A plain function that calls ``fn`` (a cell or a bound method), for ``ms.jit``."""

    def call(x: Tensor) -> Tensor:
        return fn(x)

    return call


def stage_indexes(is_global: list[bool], max_blocks: int) -> list[list[int]]:
    """Block indexes grouped into stages: consecutive runs that end at a global block or
    after ``max_blocks`` blocks (at least 1). vit_b (global 2, 5, 8, 11) with 3:
    ``[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]``."""
    size = max(1, max_blocks)
    runs: list[list[int]] = []
    run: list[int] = []
    for i, glob in enumerate(is_global):
        run.append(i)
        if glob or len(run) >= size:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


class _Stage(nn.Cell):
    """Consecutive blocks as one cell: the template a stage graph is compiled from."""

    def __init__(self, kinds: list[dict]) -> None:
        super().__init__()
        self.blocks = nn.CellList([Block(**kind) for kind in kinds])

    def construct(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


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
    ) -> None:
        # The constructor arguments: a block of the same kind can be rebuilt from them
        # (BlockGraphs compiles one such block per kind and runs every block through it).
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
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
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
        chunk = attention_chunk(b * heads, n)
        if chunk >= b * heads:
            x = self.attend(q, k, v, rel, h, w)
        else:
            # Memory-lean: a few heads at a time, so that only one chunk's (N, N) attention
            # matrices are alive (vit_b global blocks: 67 MB per head instead of 805 MB for
            # all 12). ops.depend keeps a compiled graph from running the chunks side by side.
            parts = []
            pieces = [ops.split(t, chunk, 0) for t in (q, k, v)]
            rel_pieces = [ops.split(t, chunk, 0) for t in rel] if rel is not None else None
            for i in range(len(pieces[0])):
                qi = pieces[0][i] if not parts else ops.depend(pieces[0][i], parts[-1])
                rel_i = None if rel_pieces is None else (rel_pieces[0][i], rel_pieces[1][i])
                parts.append(self.attend(qi, pieces[1][i], pieces[2][i], rel_i, h, w))
            x = ops.concat(parts, 0)
        x = x.reshape(b, heads, h, w, -1).transpose(0, 2, 3, 1, 4)
        return self.proj(x.reshape(b, h, w, -1))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, rel, h: int, w: int) -> Tensor:
        """softmax(q k^T * scale + relative-position bias) v for (BH, N, hd) inputs."""
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1))
        if rel is not None:
            bh = q.shape[0]
            rel_h, rel_w = rel
            attn = attn.reshape(bh, h, w, h, w) + rel_h.expand_dims(4) + rel_w.expand_dims(3)
            attn = attn.reshape(bh, h * w, h * w)
        attn = ops.softmax(attn, axis=-1)
        return ops.matmul(attn, v)

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


def attention_chunk(batch_heads: int, n: int) -> int:
    """Heads (of ``batch_heads``) attended at once so that one chunk's (N, N) float32
    attention stays under ``NAPARI_SAM_MS_ATTN_CHUNK_MB`` (default 64 MB: one head of a
    64x64-token global block, as vit_b/l/h have; 0 = no chunks). One head at a time was also
    the fastest measured (2-core Xeon, vit_b embedding ~4.9 s, ~5.5 s with 256 MB = 4 heads,
    ~5.8 s with all 12). Windowed blocks (N = 196) are never split."""
    budget_mb = _ATTN_CHUNK_MB
    if budget_mb <= 0:
        return batch_heads
    per_head = n * n * 4
    return max(1, min(batch_heads, int(budget_mb * 2**20 // per_head)))


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
