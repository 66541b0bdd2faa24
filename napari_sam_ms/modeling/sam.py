"""The Segment Anything model: encoder, prompt encoder and decoder put together
(mirrors ``segment_anything/modeling/sam.py``)."""

from __future__ import annotations

from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..utils.masks import upscale_masks
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT


class Sam(nn.Cell):
    """SAM: predicts object masks from an image and prompts.

    Args:
        image_encoder: backbone that turns the image into an embedding (Meta's ViT or
            MobileSAM's TinyViT).
        prompt_encoder: encodes points, boxes and masks.
        mask_decoder: predicts masks from the embeddings.
        pixel_mean: per-channel mean used to normalise input pixels.
        pixel_std: per-channel std used to normalise input pixels.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Constants, not parameters: Meta registers them as non-persistent buffers.
        self.pixel_mean = Tensor(np.asarray(pixel_mean, np.float32).reshape(-1, 1, 1))
        self.pixel_std = Tensor(np.asarray(pixel_std, np.float32).reshape(-1, 1, 1))
        self.config: dict[str, Any] = {}

    @property
    def img_size(self) -> int:
        """Side of the square model input."""
        return self.image_encoder.img_size

    def construct(self, batched_input: list[dict[str, Any]], multimask_output: bool):
        """End-to-end prediction on a list of images with prompts (Meta's ``Sam.forward``).

        Each record has ``image`` (3, H, W) already resized to the model's longest side,
        ``original_size`` (H, W), and optionally ``point_coords`` (B, N, 2),
        ``point_labels`` (B, N), ``boxes`` (B, 4), ``mask_inputs`` (B, 1, 4h, 4w), all in
        the resized frame. Returns one dict per image with ``masks``, ``iou_predictions``
        and ``low_res_logits``.
        """
        input_images = ops.stack([self.preprocess(x["image"]) for x in batched_input], 0)
        image_embeddings, early = split_embedding(self.image_encoder(input_images))
        outputs = []
        for i, record in enumerate(batched_input):
            points = None
            if record.get("point_coords") is not None:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points, record.get("boxes"), record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings[i : i + 1],
                self.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                multimask_output,
                None if early is None else early[i : i + 1],
            )
            masks = self.postprocess_masks(
                low_res, tuple(record["image"].shape[-2:]), tuple(record["original_size"])
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs

    def postprocess_masks(
        self,
        masks: Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> Tensor:
        """Upscale low-res logits to the padded input, crop the padding, resize to the
        original size (bilinear, ``align_corners=False``, as Meta's code; computed by
        :func:`napari_sam_ms.utils.masks.upscale_masks`).

        Args:
            masks: (B, C, h, w) low-res logits.
            input_size: (H, W) of the resized image before padding.
            original_size: (H, W) of the image before resizing.
        """
        return Tensor(upscale_masks(masks, self.img_size, input_size, original_size))

    def preprocess(self, x: Tensor) -> Tensor:
        """Normalise pixel values and zero-pad to a square model input. x: (..., 3, H, W)."""
        x = (x.astype(ms.float32) - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2], x.shape[-1]
        s = self.img_size
        lead = x.shape[:-2]
        if h < s:
            x = ops.concat((x, ops.zeros(lead + (s - h, w), x.dtype)), -2)
        if w < s:
            x = ops.concat((x, ops.zeros(lead + (s, s - w), x.dtype)), -1)
        return x


def split_embedding(out: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """An image encoder's output as (embedding, early features or None): encoders with
    HQ-SAM-style fusion return both, others the embedding alone."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None
