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


def looks_dark_on_bright(rgb: np.ndarray) -> bool:
    """Whether the image shows darker structure on a bright background (bright-field, H&E).

    SAM sees most objects as brighter-than-background in fluorescence; on such images the
    model input may be inverted (``invert_for_model``). Rule, on the channel-mean intensity
    of ``to_rgb_uint8(rgb)`` (subsampled to about a million pixels): with ``p1``/``p99`` the
    1st/99th percentiles (needing at least 16 grey levels of contrast), the background level
    (the median, and also the peak of the histogram) lies in the upper half of ``p1..p99``
    and the dark tail below it is longer than the bright tail above it.
    """
    gray = _mean_intensity(to_rgb_uint8(rgb))
    p1, p50, p99 = np.percentile(gray, [1, 50, 99])
    span = p99 - p1
    if span < 16:
        return False
    counts, edges = np.histogram(gray, bins=64, range=(0, 256))
    smooth = np.convolve(counts, np.ones(3), mode="same")
    mode = 0.5 * (edges[int(np.argmax(smooth))] + edges[int(np.argmax(smooth)) + 1])
    upper = p1 + 0.5 * span
    return bool(p50 > upper and mode > upper and (p50 - p1) > (p99 - p50))


def invert_for_model(rgb: np.ndarray) -> np.ndarray:
    """Return ``255 - rgb`` as (H, W, 3) uint8 (other inputs go through ``to_rgb_uint8`` first)."""
    return np.subtract(np.uint8(255), to_rgb_uint8(rgb))


def _mean_intensity(rgb: np.ndarray, max_pixels: int = 1 << 20) -> np.ndarray:
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / max_pixels))))
    return rgb[::step, ::step].astype(np.float32).mean(axis=-1).ravel()
