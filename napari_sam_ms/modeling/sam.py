"""The Segment Anything model: encoder, prompt encoder and decoder put together
(mirrors ``segment_anything/modeling/sam.py``)."""

from __future__ import annotations

from typing import Any

import cv2
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Cell):
    """SAM: predicts object masks from an image and prompts.

    Args:
        image_encoder: backbone that turns the image into an embedding.
        prompt_encoder: encodes points, boxes and masks.
        mask_decoder: predicts masks from the embeddings.
        pixel_mean: per-channel mean used to normalise input pixels.
        pixel_std: per-channel std used to normalise input pixels.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
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
        image_embeddings = self.image_encoder(input_images)
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
        """Upscale low-res logits to the padded input, crop the padding, resize to the original.

        Bilinear with ``align_corners=False``, as Meta's code (see :meth:`upscale_masks`).
        """
        return Tensor(self.upscale_masks(masks, input_size, original_size))

    def upscale_masks(
        self,
        masks: Tensor | np.ndarray,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> np.ndarray:
        """:meth:`postprocess_masks` as a numpy array (what predictors hand to users).

        Only the part of the low-res masks that the crop to ``input_size`` reads is upscaled
        (a quarter less work for a 4:3 image), and the padding is cropped in numpy (a view).
        The first resize is by the integer factor between the model's input and its low-res
        masks (SAM: 4): OpenCV's bilinear resize uses the same weights as MindSpore's and
        torch's there (its interpolation weights are multiples of 1/2048, and those of a 2x
        or 4x resize, k/8, are exact; the sums round differently, measured <= 7.2e-7 apart
        from torch's on unit-scale logits) in ~1 instead of ~3 ms for three 1024x768 masks. A
        resize to the original size by any other factor runs in MindSpore. A resize to the
        same size (an image whose longest side is already the model's input size) is
        skipped: with ``align_corners=False`` it samples every pixel at its own centre.

        Args:
            masks: (B, C, h, w) low-res logits.
        """
        up = self.upscale_to_input(masks, input_size)
        return self.resize_to_original(up, original_size)

    def upscale_to_input(
        self, masks: Tensor | np.ndarray, input_size: tuple[int, int]
    ) -> np.ndarray:
        """First step of :meth:`upscale_masks`: low-res logits (B, C, h, w) upscaled to the
        padded model input and cropped to ``input_size`` (a numpy view)."""
        s = self.img_size
        exact = self._exact_part(masks, input_size)
        if exact is not None:
            up = _resize_exact(*exact)
        else:
            masks = Tensor(masks) if isinstance(masks, np.ndarray) else masks
            up = ops.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
            up = up.asnumpy()
        return up[..., : input_size[0], : input_size[1]]

    def resize_to_original(self, up: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Second step of :meth:`upscale_masks`: input-frame logits resized to the original
        image size (bilinear, ``align_corners=False``; none when the sizes agree)."""
        if tuple(up.shape[-2:]) == tuple(original_size):
            return up
        return ops.interpolate(
            Tensor(np.ascontiguousarray(up)),
            size=tuple(original_size),
            mode="bilinear",
            align_corners=False,
        ).asnumpy()

    def binary_masks(
        self,
        masks: Tensor | np.ndarray,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> np.ndarray:
        """``upscale_masks(...) > mask_threshold`` as a contiguous bool array: the same values.

        When the upscaling is one exact integer-factor resize (an image whose longest side is
        the model's input size, e.g. 1024x768 for SAM), it runs in bands of rows, each
        compared with the threshold at once, so the full-resolution float maps (~9 MB for
        three 1024x768 masks) are never written out: a click's masks ~1 ms sooner on CPU.
        """
        same = tuple(input_size) == tuple(original_size)
        exact = self._exact_part(masks, input_size) if same else None
        if exact is None:  # a second resize, or a factor OpenCV does not resize exactly
            up = self.upscale_masks(masks, input_size, original_size)
            return np.ascontiguousarray(up > self.mask_threshold)
        return _resize_exact_above(*exact, self.mask_threshold, tuple(input_size))

    def _exact_part(
        self, masks: Tensor | np.ndarray, input_size: tuple[int, int]
    ) -> tuple[np.ndarray, int] | None:
        """The low-res rows and columns that the crop to ``input_size`` reads (one more than
        it covers; resized by the same factor, the kept pixels are the same numbers) and the
        integer factor to the model's input, when OpenCV resizes by it exactly; else None."""
        s = self.img_size
        low = masks.shape[-1]
        f = s // low
        if s % low or masks.shape[-2] != low or 2048 % (2 * f):
            return None
        rows = min(low, -(-input_size[0] // f) + 1)
        cols = min(low, -(-input_size[1] // f) + 1)
        masks = masks.asnumpy() if isinstance(masks, Tensor) else np.asarray(masks)
        return masks[..., :rows, :cols], f

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


def _resize_exact(masks: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear resize (``align_corners=False``) of (..., h, w) float32 maps by an integer
    ``factor`` whose weights OpenCV represents exactly (2, 4, 8, ...), as a new array of
    shape (..., factor*h, factor*w). Map by map into one output: on CPU ~2x faster than
    resizing the maps as channels of one image (3 maps: ~1.1 vs ~2 ms; 64: ~70 vs ~180
    ms), and each map comes out contiguous."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    flat = np.asarray(masks, np.float32).reshape(-1, h, w)
    out = np.empty((len(flat), h * factor, w * factor), np.float32)
    for src, dst in zip(flat, out, strict=True):
        cv2.resize(src, (w * factor, h * factor), dst=dst, interpolation=cv2.INTER_LINEAR)
    return out.reshape(lead + out.shape[1:])


def _resize_exact_above(
    masks: np.ndarray, factor: int, threshold: float, size: tuple[int, int], band: int = 32
) -> np.ndarray:
    """``_resize_exact(masks, factor)[..., :size[0], :size[1]] > threshold`` (bool), resized
    ``band`` low-res rows at a time with one row of context on each side: interior rows
    of a band are computed from the same source rows with the same weights as in one whole
    resize, so the values are the same; each band's float rows stay in the CPU's cache."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    out_h, out_w = size
    flat = np.asarray(masks, np.float32).reshape(-1, h, w)
    out = np.empty((len(flat), out_h, out_w), bool)
    needed = -(-out_h // factor)  # low-res rows whose output rows are kept
    for src, dst in zip(flat, out, strict=True):
        for a in range(0, needed, band):
            b = min(a + band, needed)
            lo, hi = max(a - 1, 0), min(b + 1, h)
            up = _resize_exact(src[lo:hi], factor)
            first = (a - lo) * factor
            n = min(b * factor, out_h) - a * factor
            np.greater(
                up[first : first + n, :out_w], threshold, out=dst[a * factor : a * factor + n]
            )
    return out.reshape(lead + (out_h, out_w))
