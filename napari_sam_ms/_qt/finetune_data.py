"""Training data of the "Fine-tune SAM" widget, read from napari layers (no Qt).

Every 2D plane of a Labels layer that has objects is one training image; the image plane
goes through the layer's contrast limits, as the other widgets show it to SAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_ms.training.finetune import output_problem
from napari_sam_ms.utils.image import to_rgb_uint8

from .image_target import TargetError, check_layer, contrast_limits

NO_PAIR = (
    "No training data: choose an Image layer and the Labels layer with its objects (0 = "
    "background, one id per object; e.g. corrected results of the other widgets), or add "
    "pairs with 'Add pair'."
)


class SetupError(ValueError):
    """Training cannot start as set up; the message says what to do."""


def _level0(layer: Any) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def check_pair(image: Any, labels: Any) -> None:
    """Refuse a pair whose image cannot be read or whose planes do not match the labels."""
    try:
        check_layer(image)
    except TargetError as exc:
        raise SetupError(str(exc)) from exc
    img, lab = _level0(image), _level0(labels)
    spatial = tuple(img.shape[:-1] if image.rgb else img.shape)
    if spatial != tuple(lab.shape):
        raise SetupError(
            f"Image '{image.name}' has shape {spatial} but Labels '{labels.name}' has shape "
            f"{tuple(lab.shape)}: a pair must cover the same pixels. Pick the labels drawn on "
            "this image, or make them on it (select the image, then Layer > New Labels Layer)."
        )


def training_planes(image: Any, labels: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(H, W, 3) uint8 image planes and (H, W) label planes, one per labelled plane.

    The last two axes are the plane; leading axes (z, t...) are iterated and planes without
    labels skipped. The first level of multiscale layers is used.
    """
    check_pair(image, labels)
    img, lab = _level0(image), _level0(labels)
    images, planes = [], []
    for index in np.ndindex(*lab.shape[:-2]):
        plane = np.array(lab[index])  # copies: painting during training changes nothing
        if not plane.any():
            continue
        pixels = np.array(img[index])
        try:
            rgb = to_rgb_uint8(pixels, contrast_limits(image, pixels))
        except ValueError as exc:
            raise SetupError(f"Cannot train on '{image.name}': {exc}") from exc
        images.append(rgb)
        planes.append(plane)
    if not planes:
        raise SetupError(
            f"Labels '{labels.name}' has no objects: paint some (one id per object) or pick "
            "another Labels layer."
        )
    return images, planes


def output_path(value: Any, overwrite: bool) -> Path:
    """The checkpoint to write, refused (with what to do) when it cannot or may not be."""
    text = str(value or "").strip()
    if text in ("", "."):
        raise SetupError("Choose where to save the fine-tuned model under 'Save as' (.ckpt).")
    path = Path(text).expanduser()
    problem = output_problem(path, overwrite, how="tick 'Overwrite'")
    if problem is not None:
        raise SetupError(f"{problem[0].upper()}{problem[1:]} (under 'Save as').")
    return path


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def figures(entry: dict[str, Any]) -> str:
    kinds = [k for k in ("point", "box") if f"{k}_miou" in entry]
    return ", ".join(f"{k} {entry[f'{k}_miou']:.3f}" for k in kinds)


__all__ = [
    "NO_PAIR",
    "SetupError",
    "check_pair",
    "count",
    "figures",
    "output_path",
    "training_planes",
]
