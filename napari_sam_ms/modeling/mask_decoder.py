"""Mask decoder (mirrors ``segment_anything/modeling/mask_decoder.py``).

Predicts low-resolution mask logits and their IoU scores from image and prompt embeddings.
"""

from __future__ import annotations

from mindspore import Tensor, nn, ops

from .common import ACTIVATIONS, ConvTranspose2d, Embedding, LayerNorm2d, dense
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Cell):
    """Transformer-based mask prediction with an IoU head and hypernetwork MLPs.

    Args:
        transformer_dim: channel width of the transformer.
        transformer: the two-way transformer.
        num_multimask_outputs: masks predicted for ambiguous prompts (Meta: 3).
        act: activation of the output upscaling.
        iou_head_depth: layers of the IoU MLP.
        iou_head_hidden_dim: hidden width of the IoU MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        act: str = "gelu",
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.SequentialCell(
            ConvTranspose2d(transformer_dim, transformer_dim // 4, 2),
            LayerNorm2d(transformer_dim // 4),
            ACTIVATIONS[act](),
            ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, 2),
            ACTIVATIONS[act](),
        )
        self.output_hypernetworks_mlps = nn.CellList(
            [
                MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
                for _ in range(self.num_mask_tokens)
            ]
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def construct(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (1 or B, C, h, w) image embedding.
            image_pe: (1, C, h, w) positional encoding of the embedding grid.
            sparse_prompt_embeddings: (B, N, C) point and box embeddings.
            dense_prompt_embeddings: (B, C, h, w) mask embeddings, or (1, C, h, w) when all
                prompts share them (e.g. the no-mask embedding): faster, same result.
            multimask_output: return the 3 ambiguity masks instead of the single one.

        Returns:
            mask logits (B, 3 or 1, 4h, 4w) and IoU predictions (B, 3 or 1).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, 0:1], iou_pred[:, 0:1]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Predict all mask tokens' masks and IoUs (see :meth:`construct`)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = ops.concat((self.iou_token.weight, self.mask_tokens.weight), 0)
        output_tokens = ops.broadcast_to(output_tokens.expand_dims(0), (b,) + output_tokens.shape)
        tokens = ops.concat((output_tokens, sparse_prompt_embeddings), 1)

        # Meta copies the image embedding and its positional encoding once per prompt; adding
        # by broadcasting gives the same values without the copies. When the dense embedding
        # is the same for all prompts too (no mask prompts: the caller may pass it with batch
        # 1), src keeps batch 1 and the first two-way layer projects the image side once for
        # all prompts instead of once per prompt.
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe
        c, h, w = src.shape[1:]

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        if src.shape[0] != b:  # a transformer without layers leaves the shared batch of 1
            src = ops.broadcast_to(src, (b,) + src.shape[1:])
        src = src.transpose(0, 2, 1).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = ops.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )
        b, c, h, w = upscaled.shape
        masks = ops.matmul(hyper_in, upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred


class MLP(nn.Cell):
    """A plain MLP with ReLU between layers (``layers.0`` ... ``layers.{n-1}``)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.CellList([dense(n, k) for n, k in zip(dims_in, dims_out, strict=True)])
        self.sigmoid_output = sigmoid_output

    def construct(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = ops.relu(x)
        if self.sigmoid_output:
            x = ops.sigmoid(x)
        return x
