"""Prompt encoder (mirrors ``segment_anything/modeling/prompt_encoder.py``).

Points, boxes and masks become sparse and dense embeddings for the mask decoder. Points are
(x, y) in the model's input frame (the resized, padded image), labels 1 = foreground,
0 = background, -1 = padding ("not a point").
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from .common import ACTIVATIONS, Conv2d, Embedding, LayerNorm2d


class PromptEncoder(nn.Cell):
    """Encodes prompts for SAM's mask decoder.

    Args:
        embed_dim: prompt embedding width.
        image_embedding_size: (H, W) of the image embedding.
        input_image_size: (H, W) of the padded model input.
        mask_in_chans: hidden channels of the mask-input downscaling.
        act: activation of the mask downscaling.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.dense_grid = Tensor(pixel_centre_grid(self.image_embedding_size), ms.float32)
        # pos/neg point + 2 box corners
        self.num_point_embeddings = 4
        self.point_embeddings = nn.CellList(
            [Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)]
        )
        self.not_a_point_embed = Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.SequentialCell(
            Conv2d(1, mask_in_chans // 4, 2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            ACTIVATIONS[act](),
            Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2),
            LayerNorm2d(mask_in_chans),
            ACTIVATIONS[act](),
            Conv2d(mask_in_chans, embed_dim, 1),
        )
        self.no_mask_embed = Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image embedding grid, shape (1, C, H, W)."""
        return self.pe_layer(self.dense_grid).expand_dims(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        points = points + 0.5  # shift to the centre of the pixel
        if pad:
            b = points.shape[0]
            points = ops.concat((points, ops.zeros((b, 1, 2), points.dtype)), 1)
            labels = ops.concat((labels, -ops.ones((b, 1), labels.dtype)), 1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels.expand_dims(-1)
        pad_mask = lab == -1
        emb = ops.where(pad_mask, ops.zeros_like(emb), emb)
        emb = emb + pad_mask.astype(emb.dtype) * self.not_a_point_embed.weight
        emb = emb + (lab == 0).astype(emb.dtype) * self.point_embeddings[0].weight
        emb = emb + (lab == 1).astype(emb.dtype) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        boxes = boxes + 0.5
        coords = boxes.reshape(-1, 2, 2)
        corner = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corners = ops.concat(
            (self.point_embeddings[2].weight, self.point_embeddings[3].weight), 0
        )  # (2, C)
        return corner + corners

    def _embed_masks(self, masks: Tensor) -> Tensor:
        return self.mask_downscaling(masks)

    def construct(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        Args:
            points: (coords (B, N, 2), labels (B, N)) or None.
            boxes: (B, 4) as x0, y0, x1, y1, or None.
            masks: (B, 1, 4h, 4w) low-resolution mask logits, or None.

        Returns:
            sparse embeddings (B, N', C) and dense embeddings (B, C, h, w).
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        parts = []
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = parts[0] if len(parts) == 1 else ops.concat(parts, 1)
        else:
            sparse = ops.zeros((bs, 0, self.embed_dim), ms.float32)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = ops.broadcast_to(
                self.no_mask_embed.weight.reshape(1, -1, 1, 1), (bs, self.embed_dim, h, w)
            )
        return sparse, dense


class PositionEmbeddingRandom(nn.Cell):
    """Positional encoding with random spatial frequencies (Tancik et al. Fourier features)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.positional_encoding_gaussian_matrix = Parameter(
            initializer(Normal(sigma=scale), (2, num_pos_feats), ms.float32),
            name="positional_encoding_gaussian_matrix",
            requires_grad=False,  # a buffer in Meta's model, saved in its checkpoints
        )

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """Encode points normalised to [0, 1]; output (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = ops.matmul(coords, self.positional_encoding_gaussian_matrix)
        coords = 2 * math.pi * coords
        return ops.concat((ops.sin(coords), ops.cos(coords)), -1)

    def construct(self, grid: Tensor) -> Tensor:
        """Encoding of a (h, w, 2) grid from :func:`pixel_centre_grid`, shape (C, h, w)."""
        return self._pe_encoding(grid).transpose(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Encode points given in pixels of an image of ``image_size`` = (H, W)."""
        size = Tensor(np.array([image_size[1], image_size[0]], np.float32))
        return self._pe_encoding(coords_input / size)


def pixel_centre_grid(size: tuple[int, int]) -> np.ndarray:
    """(h, w, 2) array of normalised (x, y) pixel centres of an (h, w) grid."""
    h, w = size
    ys = (np.arange(h, dtype=np.float32) + 0.5) / np.float32(h)
    xs = (np.arange(w, dtype=np.float32) + 0.5) / np.float32(w)
    return np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)
