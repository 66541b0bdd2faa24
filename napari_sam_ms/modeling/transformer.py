"""Two-way transformer of the mask decoder (mirrors ``segment_anything/modeling/transformer.py``).

Prompt tokens attend to image tokens and image tokens attend back to the prompt tokens.
"""

from __future__ import annotations

import math

import numpy as np
from mindspore import Tensor, nn, ops

from .common import LayerNorm, MLPBlock, dense


class TwoWayTransformer(nn.Cell):
    """A stack of two-way attention blocks and a final token-to-image attention.

    Args:
        depth: number of blocks.
        embedding_dim: channel width of tokens and image embedding.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        act: MLP activation (Meta: ReLU).
        attention_downsample_rate: internal width divisor of the cross attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        act: str = "relu",
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.CellList(
            [
                TwoWayAttentionBlock(
                    embedding_dim=embedding_dim,
                    num_heads=num_heads,
                    mlp_dim=mlp_dim,
                    act=act,
                    attention_downsample_rate=attention_downsample_rate,
                    skip_first_layer_pe=(i == 0),
                )
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = LayerNorm(embedding_dim)

    def construct(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        outputs: int | None = None,
        token_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Args: image_embedding and image_pe (B or 1, C, H, W) maps, or the same as rows of
        image tokens (B or 1, H*W, C) (see :func:`token_rows`); point_embedding (B, N, C).
        A batch of 1 on the image side is shared by all B prompts (broadcast, not copied).
        ``outputs``: return only the first ``outputs`` tokens, the final token-to-image
        attention computed for them alone (each token's row is its own: the same numbers;
        the mask decoder reads only its output tokens). ``token_bias`` (B, N): added to the
        attention scores wherever the tokens are keys (0 keeps a token, a large negative
        value hides it), so padding tokens leave the others' results unchanged.

        Returns: processed point tokens (B, N or outputs, C) and image tokens (B, H*W, C).
        """
        image_embedding = token_rows(image_embedding)
        image_pe = token_rows(image_pe)
        queries = point_embedding
        keys = image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, token_bias)
        if outputs is not None:
            queries = queries[:, :outputs]
            point_embedding = point_embedding[:, :outputs]
        q = queries + point_embedding
        k = keys + image_pe
        queries = queries + self.final_attn_token_to_image(q, k, keys)
        queries = self.norm_final_attn(queries)
        return queries, keys


def token_rows(x: Tensor) -> Tensor:
    """A (B, C, H, W) map as the transformer's rows of image tokens (B, H*W, C); rows are
    returned as they are."""
    if x.ndim == 3:
        return x
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(0, 2, 1)


class TwoWayAttentionBlock(nn.Cell):
    """Self-attention of tokens, token->image, MLP on tokens, image->token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        act: str = "relu",
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act)
        self.norm3 = LayerNorm(embedding_dim)
        self.norm4 = LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def construct(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        token_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_bias)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_bias)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = queries + self.cross_attn_token_to_image(q, k, keys)
        queries = self.norm2(queries)

        queries = queries + self.mlp(queries)
        queries = self.norm3(queries)

        q = queries + query_pe
        k = keys + key_pe
        keys = keys + self.cross_attn_image_to_token(k, q, queries, token_bias)
        keys = self.norm4(keys)
        return queries, keys


class Attention(nn.Cell):
    """Attention with optional down-projection of the embedding size for queries/keys/values.

    Between the few prompt tokens and the thousands of image tokens the products are
    reassociated, so that no image token is projected: with ``H`` heads of width ``d`` and
    ``n`` tokens (``H * n`` below the internal width), token-to-image attention folds the key
    projection into the queries (``q Wk x^T``; the key bias shifts every score of a query
    equally and cancels in the softmax) and applies the value projection after the
    weighted sum (``(A x) Wv^T + bv``, the weights summing to one), and image-to-token
    attention folds the tokens' keys into the query projection (``x (Wq^T K) + bq K``) and
    the output projection into the tokens' values (``A (V Wo^T) + bo``). The same sums in
    another order (round-off differs, ~1e-6 relative). Other shapes take Meta's order.
    ``key_bias`` (B, n keys), added to the scores before the softmax, masks keys (not in
    Meta's model: it hides padding tokens; keys of the many-keys case take none).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = dense(embedding_dim, self.internal_dim)
        self.k_proj = dense(embedding_dim, self.internal_dim)
        self.v_proj = dense(embedding_dim, self.internal_dim)
        self.out_proj = dense(self.internal_dim, embedding_dim)
        self.norm_scale = math.sqrt(self.internal_dim // num_heads)
        self.matmul_t = ops.BatchMatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        # (1, H, 1, H, 1) selector that spreads per-head keys into a block-diagonal matrix
        self.head_eye = Tensor(
            np.eye(num_heads, dtype=np.float32).reshape(1, num_heads, 1, num_heads, 1)
        )

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(0, 2, 1, 3)

    def _few(self, tokens: int, others: int) -> bool:
        return self.num_heads * tokens < self.internal_dim and others > self.internal_dim

    def construct(self, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None = None) -> Tensor:
        if self._few(q.shape[1], k.shape[1]) and q.shape[0] == k.shape[0] and key_bias is None:
            return self._few_queries(q, k, v)
        if self._few(k.shape[1], q.shape[1]):
            return self._few_keys(q, k, v, key_bias)
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        attn = ops.matmul(q, k.swapaxes(-2, -1)) / self.norm_scale
        if key_bias is not None:
            attn = attn + key_bias.reshape(k.shape[0], 1, 1, k.shape[2])
        attn = ops.softmax(attn, axis=-1)
        out = ops.matmul(attn, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, h * c))

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Few queries (B, n, C), many keys and values (B, N, C) of their own batch."""
        b, n, _ = q.shape
        h, c = self.num_heads, k.shape[-1]
        d = self.internal_dim // h
        qh = self._separate_heads(self.q_proj(q)) / self.norm_scale  # (B, h, n, d)
        qk = ops.matmul(qh, self.k_proj.weight.reshape(h, d, c)).reshape(b, h * n, c)
        attn = ops.softmax(self.matmul_t(qk, k), axis=-1)  # (B, h*n, N)
        ctx = ops.matmul(attn, v).reshape(b, h, n, c)
        out = ops.matmul(ctx, self.v_proj.weight.reshape(h, d, c).swapaxes(-2, -1))
        out = out + self.v_proj.bias.reshape(1, h, 1, d)  # (B, h, n, d)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, h * d))

    def _few_keys(self, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None) -> Tensor:
        """Many queries (B or 1, N, C), few keys and values (B, n, C)."""
        b, n, _ = k.shape
        nq = q.shape[1]
        h = self.num_heads
        d = self.internal_dim // h
        kh = self._separate_heads(self.k_proj(k)) / self.norm_scale  # (B, h, n, d)
        # block-diagonal keys (B, h*d, h*n): head i's keys in rows i*d.. and columns i*n..
        keys = (kh.swapaxes(-2, -1).expand_dims(3) * self.head_eye).reshape(b, h * d, h * n)
        if q.shape[0] == b:  # fold the keys into the query projection
            wq = ops.matmul(self.q_proj.weight.swapaxes(0, 1), keys)  # (B, C, h*n)
            scores = ops.matmul(q, wq) + ops.matmul(self.q_proj.bias.reshape(1, 1, -1), keys)
        else:  # image tokens shared by all prompts: project them once
            scores = ops.matmul(self.q_proj(q), keys)  # (B, N, h*n)
        scores = scores.reshape(b, nq, h, n)
        if key_bias is not None:
            scores = scores + key_bias.reshape(b, 1, 1, n)
        attn = ops.softmax(scores, axis=-1).reshape(b, nq, h * n)
        vh = self._separate_heads(self.v_proj(v))  # (B, h, n, d)
        wo = self.out_proj.weight.reshape(self.embedding_dim, h, d).transpose(1, 2, 0)
        values = ops.matmul(vh, wo).reshape(b, h * n, self.embedding_dim)  # (B, h*n, C)
        out = ops.matmul(attn, values).reshape(-1, self.embedding_dim)
        return self.bias_add(out, self.out_proj.bias).reshape(b, nq, self.embedding_dim)
