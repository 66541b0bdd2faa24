"""Resize images and prompts so the longest side matches the model input
(mirrors ``segment_anything/utils/transforms.py``, numpy and Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image


class ResizeLongestSide:
    """Resize images to ``target_length`` on their longest side, and prompts to match.

    Images are resized with Pillow's bilinear filter, exactly as Meta's code does through
    torchvision, so the model sees the same pixels.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, 3) uint8 image."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map (..., 2) (x, y) coordinates of an image of ``original_size`` = (H, W)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map (..., 4) (x0, y0, x1, y1) boxes of an image of ``original_size``."""
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) after scaling the longest side to ``long_side_length``, rounded half up."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)
