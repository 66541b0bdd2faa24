"""Convert images as scientists have them into the 8-bit RGB that SAM was trained on."""

from __future__ import annotations

import numpy as np


def to_rgb_uint8(
    image: np.ndarray,
    contrast_limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB copy (or the input itself if it already is one).

    Conversion rules (documented in the README):

    - (H, W) and (H, W, 1) grayscale are repeated into three channels; (H, W, 4) RGBA drops
      the alpha channel; (H, W, 2) and other channel counts are refused.
    - uint8 is used as is (unless ``contrast_limits`` are given); bool maps to 0/255.
    - Every other dtype (uint16, int, float) is scaled linearly from ``contrast_limits``
      (napari's display range) or, when None, from the image's own min..max, to 0..255,
      clipping outside values. A constant image becomes black.
    - Non-finite pixels (NaN, inf) become the lowest value.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(
            f"expected a 2D image of shape (H, W), (H, W, 3) or (H, W, 4), got shape "
            f"{image.shape}; for stacks pass one slice, for channels-first data move the "
            "channel axis last (np.moveaxis(image, 0, -1))"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        out = image.astype(np.uint8) * 255
    elif image.dtype == np.uint8 and contrast_limits is None:
        out = image
    elif np.issubdtype(image.dtype, np.number) and not np.iscomplexobj(image):
        out = _rescale(image, contrast_limits)
    else:
        raise ValueError(f"cannot segment an image of dtype {image.dtype}: use numbers")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def _rescale(image: np.ndarray, contrast_limits: tuple[float, float] | None) -> np.ndarray:
    data = image.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        low = data[finite].min() if finite.any() else 0.0
        data = np.where(finite, data, low)
    if contrast_limits is None:
        lo, hi = float(data.min()), float(data.max())
    else:
        lo, hi = (float(v) for v in contrast_limits)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(
                f"contrast limits must be finite with low <= high, got {contrast_limits}"
            )
    if hi <= lo:
        return np.zeros(data.shape, np.uint8)
    scaled = (data - lo) * (255.0 / (hi - lo))
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)
