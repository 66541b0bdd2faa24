"""Checks and conversions of the images and prompts users give a predictor, with messages
that say what to change."""

from __future__ import annotations

import numpy as np
from mindspore import Tensor

from .engine import Prompts
from .utils.image import to_rgb_uint8
from .utils.transforms import ResizeLongestSide


def model_image(
    image: np.ndarray, image_format: str, model_format: str, transform: ResizeLongestSide
) -> tuple[Tensor, tuple[int, int]]:
    """An image as ``set_image`` takes it, as the (1, 3, h, w) resized model input.

    Args:
        image: (H, W, 3) RGB or BGR; grayscale, RGBA and uint16/float images are converted
            (see :func:`napari_sam_ms.utils.image.to_rgb_uint8`).
        image_format: ``RGB`` or ``BGR`` (channel order of a 3-channel ``image``).
        model_format: the channel order the model takes.
        transform: the resize to the model's longest side.

    Returns:
        the resized image and the (H, W) of the given one.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = np.asarray(image)
    if image_format != model_format and image.ndim == 3 and image.shape[-1] >= 3:
        image = image[..., [2, 1, 0] + list(range(3, image.shape[-1]))]
    image = to_rgb_uint8(image)
    input_image = transform.apply_image(image)
    chw = np.ascontiguousarray(input_image.transpose(2, 0, 1))[None]
    return Tensor(chw), (int(image.shape[0]), int(image.shape[1]))


def one_object(point_coords, point_labels, box, mask_input) -> tuple:
    """``predict``'s prompts of one object as ``predict_batch``'s batch of one."""
    coords, labels = check_points(point_coords, point_labels, single=True)
    return (
        None if coords is None else coords[None],
        None if labels is None else labels[None],
        check_box(box),
        single_mask_input(mask_input),
    )


def model_frame(
    point_coords,
    point_labels,
    boxes,
    mask_input,
    transform: ResizeLongestSide,
    original_size: tuple[int, int],
    mask_size: tuple[int, int],
) -> tuple:
    """``predict_batch``'s prompts in image pixels, checked, in the model's input frame.

    Returns:
        coords (B, N, 2), labels (B, N), boxes (B, 4), mask_input (B, 1, h, w) (absent: None).
    """
    coords, labels = check_points(point_coords, point_labels, single=False)
    if coords is not None:
        check_inside(coords.reshape(-1, 2), original_size)
        coords = transform.apply_coords(coords, original_size)
    if boxes is not None:
        boxes = transform.apply_boxes(check_boxes(boxes, original_size), original_size)
    mask_input = check_mask_input(mask_input, mask_size)
    check_batch(coords, boxes, mask_input)
    return coords, labels, boxes, mask_input


def check_points(coords, labels, single: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate points and labels: (N, 2) and (N,) when ``single``, else (B, N, 2), (B, N).

    Returns:
        float64 coords and int32 labels, or (None, None) when neither is given.
    """
    if coords is None and labels is None:
        return None, None
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels)
    want = 2 if single else 3
    if coords.ndim != want or coords.shape[-1] != 2:
        form = "(N, 2)" if single else "(B, N, 2)"
        raise ValueError(f"point_coords must have shape {form} of (x, y), got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels shape {labels.shape} does not match point_coords {coords.shape}: "
            "give one label per point"
        )
    if coords.shape[-2] == 0:
        raise ValueError("point_coords is empty: pass None instead of an empty array")
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contains NaN or infinite values")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
    return coords, labels.astype(np.int32)


def check_inside(coords: np.ndarray, original_size: tuple[int, int]) -> None:
    """Refuse (x, y) points outside an image of ``original_size`` = (H, W)."""
    h, w = original_size
    outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
    if outside.any():
        x, y = coords[np.argmax(outside)]
        raise ValueError(
            f"point ({x:g}, {y:g}) lies outside the {w}x{h} image; points are (x, y) pixels"
        )


def check_boxes(boxes, original_size: tuple[int, int]) -> np.ndarray:
    """(B, 4) boxes with corners ordered (x0 <= x1, y0 <= y1) and clipped to the image."""
    boxes = np.asarray(boxes, dtype=float)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) of x0, y0, x1, y1, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite values")
    h, w = original_size
    x = np.clip(np.sort(boxes[:, [0, 2]], axis=1), 0, w)
    y = np.clip(np.sort(boxes[:, [1, 3]], axis=1), 0, h)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def check_box(box) -> np.ndarray | None:
    """One box of 4 numbers as (1, 4), or None."""
    if box is None:
        return None
    box = np.asarray(box, dtype=float)
    if box.size != 4:
        raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {box.shape}")
    return box.reshape(1, 4)


def single_mask_input(mask_input) -> np.ndarray | None:
    """One object's mask input, (1, h, w) or (h, w), as the (1, 1, h, w) batch of one."""
    if mask_input is None:
        return None
    mask_input = np.asarray(mask_input, np.float32)
    if mask_input.ndim == 2:
        mask_input = mask_input[None]
    return mask_input[None]


def check_mask_input(mask_input, size: tuple[int, int]) -> np.ndarray | None:
    """(B, 1, h, w) low-res logits of an earlier prediction, ``size`` = (h, w), or None."""
    if mask_input is None:
        return None
    mask_input = np.asarray(mask_input, np.float32)
    if mask_input.ndim != 4 or mask_input.shape[1] != 1 or mask_input.shape[2:] != size:
        raise ValueError(
            f"mask_input must have shape (B, 1, {size[0]}, {size[1]}) (low-res logits "
            f"of an earlier prediction), got {mask_input.shape}"
        )
    return mask_input


def check_batch(*arrays) -> None:
    """At least one prompt, and all prompts describe the same number of objects."""
    sizes = {len(a) for a in arrays if a is not None}
    if not sizes:
        raise ValueError("no prompt given: pass points with labels, a box or a mask_input")
    if len(sizes) > 1:
        raise ValueError(
            "points, boxes and mask_input must describe the same number of objects "
            f"(got batch sizes {sorted(sizes)})"
        )


def prompt_arrays(point_coords, point_labels, boxes, mask_input) -> Prompts:
    """Prompts as float32/int32 arrays (absent ones None); at least one must be given."""
    prompts = Prompts(
        None if point_coords is None else np.asarray(point_coords, np.float32),
        None if point_coords is None else np.asarray(point_labels, np.int32),
        None if boxes is None else np.asarray(boxes, np.float32),
        None if mask_input is None else np.asarray(mask_input, np.float32),
    )
    if all(a is None for a in prompts):
        raise ValueError("no prompt given: pass points with labels, a box or a mask_input")
    return prompts


__all__ = [
    "model_frame",
    "model_image",
    "one_object",
    "check_batch",
    "check_box",
    "check_boxes",
    "check_inside",
    "check_mask_input",
    "check_points",
    "prompt_arrays",
    "single_mask_input",
]
