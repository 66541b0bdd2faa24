"""Low-res mask logits to image-sized logits and masks (``Sam.postprocess_masks`` in numpy).

Bilinear with ``align_corners=False``, as Meta's code. Only the part of the low-res masks
that the crop to the input size reads is upscaled, and the padding is cropped in numpy (a
view). The first resize, by the integer factor between the model's input and its low-res
masks (SAM: 4), runs in OpenCV: its bilinear weights are multiples of 1/2048, exact for
factors 2, 4, 8..., so it gives MindSpore's and torch's numbers up to round-off of the sums
(measured <= 7.2e-7 from torch's on unit-scale logits). A resize to the original size by any
other factor runs in MindSpore; a resize to the same size is skipped (with
``align_corners=False`` it samples every pixel at its own centre).
"""

from __future__ import annotations

import cv2
import numpy as np
from mindspore import Tensor, ops


def upscale_masks(
    masks: Tensor | np.ndarray,
    img_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> np.ndarray:
    """``Sam.postprocess_masks`` as a numpy array.

    Args:
        masks: (B, C, h, w) low-res logits.
        img_size: side of the model's square input.
        input_size: (H, W) of the resized image before padding.
        original_size: (H, W) of the image before resizing.
    """
    up = upscale_to_input(masks, img_size, input_size)
    return resize_to_original(up, original_size)


def upscale_to_input(
    masks: Tensor | np.ndarray, img_size: int, input_size: tuple[int, int]
) -> np.ndarray:
    """First step of :func:`upscale_masks`: low-res logits (B, C, h, w) upscaled to the
    padded model input and cropped to ``input_size`` (a numpy view)."""
    exact = exact_part(masks, img_size, input_size)
    if exact is not None:
        up = resize_exact(*exact)
    else:
        masks = Tensor(masks) if isinstance(masks, np.ndarray) else masks
        size = (img_size, img_size)
        up = ops.interpolate(masks, size=size, mode="bilinear", align_corners=False).asnumpy()
    return up[..., : input_size[0], : input_size[1]]


def resize_to_original(up: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Second step of :func:`upscale_masks`: input-frame logits resized to the original
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
    masks: Tensor | np.ndarray,
    img_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
) -> np.ndarray:
    """``upscale_masks(...) > threshold`` as a contiguous bool array: the same values.

    When the upscaling is one exact integer-factor resize (an image whose longest side is
    the model's input size), it runs in bands of rows (:func:`resize_exact_above`), so the
    full-resolution float maps are never written out.
    """
    same = tuple(input_size) == tuple(original_size)
    exact = exact_part(masks, img_size, input_size) if same else None
    if exact is None:  # a second resize, or a factor OpenCV does not resize exactly
        up = upscale_masks(masks, img_size, input_size, original_size)
        return np.ascontiguousarray(up > threshold)
    return resize_exact_above(*exact, threshold, tuple(input_size))


def exact_part(
    masks: Tensor | np.ndarray, img_size: int, input_size: tuple[int, int]
) -> tuple[np.ndarray, int] | None:
    """The low-res rows and columns that the crop to ``input_size`` reads (one more than it
    covers; resized by the same factor, the kept pixels are the same numbers) and the
    integer factor to the model's input, when OpenCV resizes by it exactly; else None."""
    low = masks.shape[-1]
    f = img_size // low
    if img_size % low or masks.shape[-2] != low or 2048 % (2 * f):
        return None
    rows = min(low, -(-input_size[0] // f) + 1)
    cols = min(low, -(-input_size[1] // f) + 1)
    masks = masks.asnumpy() if isinstance(masks, Tensor) else np.asarray(masks)
    return masks[..., :rows, :cols], f


def resize_exact(masks: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear resize (``align_corners=False``) of (..., h, w) float32 maps by an integer
    ``factor`` whose weights OpenCV represents exactly (2, 4, 8, ...), as a new array of
    shape (..., factor*h, factor*w), map by map (each comes out contiguous)."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    flat = np.asarray(masks, np.float32).reshape(-1, h, w)
    out = np.empty((len(flat), h * factor, w * factor), np.float32)
    for src, dst in zip(flat, out, strict=True):
        cv2.resize(src, (w * factor, h * factor), dst=dst, interpolation=cv2.INTER_LINEAR)
    return out.reshape(lead + out.shape[1:])


def resize_exact_above(
    masks: np.ndarray, factor: int, threshold: float, size: tuple[int, int], band: int = 32
) -> np.ndarray:
    """``resize_exact(masks, factor)[..., :size[0], :size[1]] > threshold`` (bool), resized
    ``band`` low-res rows at a time with one row of context on each side: interior rows of a
    band are computed from the same source rows with the same weights as in one whole
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
            up = resize_exact(src[lo:hi], factor)
            first = (a - lo) * factor
            n = min(b * factor, out_h) - a * factor
            np.greater(
                up[first : first + n, :out_w], threshold, out=dst[a * factor : a * factor + n]
            )
    return out.reshape(lead + (out_h, out_w))


__all__ = [
    "binary_masks",
    "exact_part",
    "resize_exact",
    "resize_exact_above",
    "resize_to_original",
    "upscale_masks",
    "upscale_to_input",
]
