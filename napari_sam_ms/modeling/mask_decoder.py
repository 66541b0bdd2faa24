"""Mask decoder (mirrors ``segment_anything/modeling/mask_decoder.py``).

Predicts low-resolution mask logits and their IoU scores from image and prompt embeddings.
"""

from __future__ import annotations

from mindspore import Tensor, nn, ops

from . import kernels
from .common import ACTIVATIONS, ConvTranspose2d, Embedding, LayerNorm2d, dense
from .transformer import TwoWayTransformer, token_rows


class MaskDecoder(nn.Cell):
    """Transformer-based mask prediction with an IoU head and hypernetwork MLPs.

    Args:
        transformer_dim: channel width of the transformer.
        transformer: the two-way transformer.
        num_multimask_outputs: masks predicted for ambiguous prompts (Meta: 3).
        act: activation of the output upscaling.
        iou_head_depth: layers of the IoU MLP.
        iou_head_hidden_dim: hidden width of the IoU MLP.
        hq_fusion: HQ-SAM-style fusion (off: Meta's decoder): early high-resolution
            encoder features (``early_dim`` channels on the embedding's grid) are upscaled
            by ``compress_vit_feat`` (as HQ-SAM's, two 2x transposed convolutions) and added
            to the upscaled mask features before the hypernetwork product. The mask tokens
            and outputs stay SAM's (no HQ output token).
        early_dim: channels of the early features (with ``hq_fusion``).
        early_scale: the early features' grid over the embedding's (1 or 2). At 2 the
            first transposed convolution of ``compress_vit_feat`` has a 1x1 kernel: each
            2x2 block of early pixels is already the 2x upscaled pixels of one token.
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
        hq_fusion: bool = False,
        early_dim: int = 0,
        early_scale: int = 1,
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
        self.hq_fusion = bool(hq_fusion)
        self.early_dim = int(early_dim) if hq_fusion else 0
        if self.hq_fusion:
            if early_dim <= 0:
                raise ValueError("hq_fusion needs the early features' channels (early_dim)")
            if early_scale not in (1, 2):
                raise ValueError(f"early features 1x or 2x the embedding's grid: {early_scale}x")
            self.early_scale = int(early_scale)
            self.compress_vit_feat = nn.SequentialCell(
                ConvTranspose2d(early_dim, transformer_dim // 4, 2 // early_scale),
                LayerNorm2d(transformer_dim // 4),
                ACTIVATIONS[act](),
                ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, 2),
            )

    def construct(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        early_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (1 or B, C, h, w) image embedding.
            image_pe: (1, C, h, w) positional encoding of the embedding grid.
            sparse_prompt_embeddings: (B, N, C) point and box embeddings.
            dense_prompt_embeddings: (B, C, h, w) mask embeddings, or (1, C, h, w) or
                (1, C, 1, 1) when all prompts and pixels share them (the no-mask embedding):
                faster, same result.
            multimask_output: return the 3 ambiguity masks instead of the single one.
            early_features: (1 or B, early_dim, h, w) early encoder features (with
                ``hq_fusion`` only).

        Returns:
            mask logits (B, 3 or 1, 4h, 4w) and IoU predictions (B, 3 or 1).
        """
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            outputs="multimask" if multimask_output else "single",
            early_features=early_features,
        )

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        outputs: str = "all",
        early_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict mask logits and IoUs (see :meth:`construct`).

        Args:
            outputs: ``all`` mask tokens (Meta's ``predict_masks``), ``multimask`` (tokens 1-3)
                or ``single`` (token 0). Only the returned masks are computed.
        """
        iou_pred, src, hyper_in = self.predict_tokens(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            outputs,
        )
        h, w = image_embeddings.shape[2:]
        return self.upscale_masks(src, hyper_in, h, w, early_features), iou_pred

    def image_rows(
        self, image_embeddings: Tensor, image_pe: Tensor, dense_prompt_embeddings: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The image side of :meth:`predict_tokens` when every prompt shares the dense
        embedding (no mask prompts): the image embedding plus the dense embedding and the
        positional encoding, as the transformer's rows of image tokens (1, h*w, C). Made
        once per image and passed to :meth:`predict_tokens` instead of the maps, it saves
        the same additions and transposes on every click (same numbers).
        """
        return token_rows(image_embeddings + dense_prompt_embeddings), token_rows(image_pe)

    def predict_tokens(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        outputs: str = "all",
        token_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Everything but the output upscaling: the two-way transformer, the IoU head and
        the hypernetworks. Whole-image mode filters candidates by their predicted IoU before
        it computes their masks with :meth:`upscale_masks`.

        ``image_embeddings`` and ``image_pe`` may be the rows from :meth:`image_rows`
        (``dense_prompt_embeddings`` is then not used). ``token_bias`` (B, N) is added to
        the attention scores where the sparse prompt tokens are keys (0: kept, a large
        negative value: a padding token hidden from the others; see :meth:`token_states`).

        Returns:
            IoU predictions (B, M), image tokens (B, h*w, C) and hypernetwork outputs
            (B, M, C/8) for the M masks that ``outputs`` selects.
        """
        hs, src = self.token_states(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            token_bias,
        )
        return self.output_heads(hs, src, outputs)

    def token_states(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        token_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The two-way transformer: the output tokens' states (B, 1 + M, C) (the IoU
        token, then the M mask tokens; the prompt tokens' are not computed, nothing reads
        them) and image tokens (B, h*w, C). Arguments as :meth:`predict_tokens`; the output
        tokens are never masked (their bias is 0).
        """
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = ops.concat((self.iou_token.weight, self.mask_tokens.weight), 0)
        output_tokens = ops.broadcast_to(output_tokens.expand_dims(0), (b,) + output_tokens.shape)
        tokens = ops.concat((output_tokens, sparse_prompt_embeddings), 1)

        # Meta copies the image embedding and its positional encoding once per prompt; adding
        # by broadcasting gives the same values without the copies. When the dense embedding
        # is the same for all prompts too (no mask prompts: the caller may pass it with batch
        # 1), src keeps batch 1 and the first two-way layer projects the image side once for
        # all prompts instead of once per prompt.
        if image_embeddings.ndim == 4:
            src = image_embeddings + dense_prompt_embeddings
        else:  # rows from image_rows(): the dense embedding is already in them
            src = image_embeddings
        if token_bias is not None:
            kept = ops.zeros((b, output_tokens.shape[1]), token_bias.dtype)
            token_bias = ops.concat((kept, token_bias), 1)
        hs, src = self.transformer(src, image_pe, tokens, 1 + self.num_mask_tokens, token_bias)
        if src.shape[0] != b:  # a transformer without layers leaves the shared batch of 1
            src = ops.broadcast_to(src, (b,) + src.shape[1:])
        return hs, src

    def output_heads(
        self, hs: Tensor, src: Tensor, outputs: str = "all"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The IoU head and the hypernetworks on the token states of :meth:`token_states`;
        returns what :meth:`predict_tokens` returns."""
        if outputs == "multimask":
            first, count = 1, self.num_mask_tokens - 1
        elif outputs == "single":
            first, count = 0, 1
        else:
            first, count = 0, self.num_mask_tokens
        hyper_in = ops.stack(
            [
                self.output_hypernetworks_mlps[i](hs[:, 1 + i, :])
                for i in range(first, first + count)
            ],
            axis=1,
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, first : first + count]
        return iou_pred, src, hyper_in

    def upscale_masks(
        self, src: Tensor, hyper_in: Tensor, h: int, w: int, early: Tensor | None = None
    ) -> Tensor:
        """Meta's ``output_upscaling`` followed by the hypernetwork product, run on
        channels-last pixels with the pixel shuffle applied to the mask channels at the end
        (:func:`kernels.hypernetwork_masks`): the same sums as upscaling NCHW maps.

        Args:
            src: (B, h*w, C) image tokens from the transformer.
            hyper_in: (B, M, C/8) one hypernetwork output per returned mask.
            early: (1 or B, early_dim, h, w) early encoder features, added after
                ``compress_vit_feat`` (``hq_fusion`` only; ignored otherwise).

        Returns:
            (B, M, 4h, 4w) mask logits.
        """
        up1, norm, act1, up2, act2 = (self.output_upscaling[i] for i in range(5))
        y = act1(norm.channels_last(up1.channels_last(src)))  # (B, hw, k1*k1, C/4)
        y = act2(up2.channels_last(y))  # (B, hw, k1*k1, k2*k2, C/8)
        if self.hq_fusion:
            y = y + self.early_mask_features(early)
        return kernels.hypernetwork_masks(y, hyper_in, h, w, up1.k, up2.k)

    def early_mask_features(self, early: Tensor | None) -> Tensor:
        """HQ-SAM's ``compress_vit_feat`` on early features (1 or B, early_dim, h, w), in
        :meth:`upscale_masks`' channels-last layout (1 or B, h*w, 4, 4, C/8)."""
        if early is None:
            raise ValueError("this decoder fuses early encoder features: pass them")
        up1, norm, act, up2 = (self.compress_vit_feat[i] for i in range(4))
        if self.early_scale == 1:
            y = up1.channels_last(token_rows(early))  # (B, hw, 4, C/4)
        else:  # pixel (2i+di, 2j+dj) is sub-pixel (di, dj) of token (i, j)
            b, c, h2, w2 = early.shape
            blocks = early.reshape(b, c, h2 // 2, 2, w2 // 2, 2).transpose(0, 2, 4, 3, 5, 1)
            y = up1.channels_last(blocks.reshape(b, -1, 4, c))  # (B, hw, 4, 1, C/4)
            y = y.reshape(b, -1, 4, y.shape[-1])
        return up2.channels_last(act(norm.channels_last(y)))


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
