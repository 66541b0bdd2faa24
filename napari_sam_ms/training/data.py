"""Training images in the model's input frame, and batches of objects drawn from them.

An image is prepared exactly as the predictor prepares it (8-bit RGB conversion, resize of
the longest side to the model's input size, zero padding to a square), and its labels are
resized with nearest-neighbour to the same frame, so training sees what inference sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..utils.image import to_rgb_uint8
from ..utils.transforms import ResizeLongestSide

MIN_OBJECT_PIXELS = 4  # objects smaller than this in the input frame are not prompted


@dataclass(frozen=True)
class PreparedImage:
    """An image and its labels in the model input frame.

    Attributes:
        pixels: (3, S, S) uint8, zero-padded bottom/right.
        labels: (S, S) int32 instance ids, 0 outside objects and in the padding.
        ids: ids with at least ``MIN_OBJECT_PIXELS`` pixels.
        input_size: (h, w) of the resized image before padding.
    """

    pixels: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    input_size: tuple[int, int]

    @property
    def padded(self) -> bool:
        """Whether the image was padded to the square frame (it cannot be turned then)."""
        return self.input_size != self.labels.shape


def prepare(image: np.ndarray, labels: np.ndarray, img_size: int) -> PreparedImage:
    """Bring an image (any dtype the predictor takes) and its (H, W) labels to the input frame."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D label image, got shape {labels.shape}")
    rgb = to_rgb_uint8(image)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    resized = ResizeLongestSide(img_size).apply_image(rgb)
    h, w = resized.shape[:2]
    pixels = np.zeros((3, img_size, img_size), np.uint8)
    pixels[:, :h, :w] = resized.transpose(2, 0, 1)
    lab = labels.astype(np.int32)
    if (h, w) != lab.shape:
        lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
    frame = np.zeros((img_size, img_size), np.int32)
    frame[:h, :w] = lab
    counts = np.bincount(frame.ravel())
    ids = np.flatnonzero(counts >= MIN_OBJECT_PIXELS)
    return PreparedImage(pixels, frame, ids[ids != 0], (h, w))


class PreparedImages(Sequence):
    """A lazily prepared, cached sequence of training images.

    Args:
        source: ``source[i]`` is an (image, labels) pair, or has ``.image``/``.labels``.
        img_size: the model input size.
    """

    def __init__(self, source: Sequence, img_size: int) -> None:
        self.source = source
        self.img_size = img_size
        self._cache: dict[int, PreparedImage] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> PreparedImage:  # type: ignore[override]
        if i not in self._cache:
            item = self.source[i]
            image, labels = (item.image, item.labels) if hasattr(item, "labels") else item
            self._cache[i] = prepare(image, labels, self.img_size)
        return self._cache[i]

    def usable(self, check_all: int = 256) -> list[int]:
        """Indexes of images with at least one object.

        Up to ``check_all`` images, every image is prepared and checked. A larger set (e.g.
        thousands of generated images) is checked lazily instead, so that nothing is
        prepared up front: all indexes are returned if one of the first images has an
        object, and :func:`sample_batch` draws again when it meets an image without any.
        """
        if len(self) <= check_all:
            return [i for i in range(len(self)) if len(self[i].ids)]
        if not any(len(self[i].ids) for i in range(min(len(self), 16))):
            return [i for i in range(len(self)) if len(self[i].ids)]
        return list(range(len(self)))


@dataclass(frozen=True)
class ObjectBatch:
    """B = n_images * objects_per_image objects from a few images.

    Attributes:
        image_index: (n_images,) indexes into the image sequence.
        pixels: (n_images, 3, S, S) float32.
        owner: (B,) int32, which of the n_images each object is on.
        masks: (B, S, S) bool ground truth.
        orientation: (n_images,) how each image was turned (:func:`orient`; 0: as is).
    """

    image_index: np.ndarray
    pixels: np.ndarray
    owner: np.ndarray
    masks: np.ndarray
    orientation: np.ndarray


def orient(item: PreparedImage, orientation: int) -> PreparedImage:
    """``item`` turned ``orientation % 4`` quarter turns, then mirrored if ``orientation >= 4``.
    A padded (non-square) image is returned as is: only orientation 0 exists for it."""
    if orientation == 0 or item.padded:
        return item
    k, flip = orientation % 4, orientation >= 4

    def move(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        return np.ascontiguousarray(a[..., ::-1] if flip else a)

    return PreparedImage(move(item.pixels), move(item.labels), item.ids, item.input_size)


def random_orientation(item: PreparedImage, rng: np.random.Generator) -> int:
    """A random orientation for :func:`orient` (0 for a padded image)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    return 0 if item.padded else k + 4 * flip


def sample_batch(
    images: Sequence[PreparedImage],
    candidates: Sequence[int],
    rng: np.random.Generator,
    n_images: int,
    objects_per_image: int,
    augment: bool = False,
) -> ObjectBatch:
    """Draw images and objects on each (without replacement when there are enough).

    Args:
        images: the prepared images.
        candidates: indexes of ``images`` to draw from (see :meth:`PreparedImages.usable`).
        rng: the random generator.
        n_images, objects_per_image: the batch's size.
        augment: turn and mirror each drawn image at random (:func:`orient`).
    """
    pick = rng.choice(len(candidates), n_images, replace=len(candidates) < n_images)
    index = np.asarray(candidates)[pick]
    for j in range(n_images):  # lazily checked candidates: draw again for an empty image
        for _ in range(100):
            if len(images[int(index[j])].ids):
                break
            index[j] = candidates[int(rng.integers(len(candidates)))]
        else:
            raise ValueError("could not find a training image with a labelled object")
    pixels, owner, masks, orientation = [], [], [], np.zeros(n_images, np.int64)
    for j, i in enumerate(index):
        item = images[int(i)]
        if augment:
            orientation[j] = random_orientation(item, rng)
            item = orient(item, int(orientation[j]))
        ids = rng.choice(item.ids, objects_per_image, replace=len(item.ids) < objects_per_image)
        pixels.append(item.pixels)
        owner.extend([j] * objects_per_image)
        masks.extend(item.labels == k for k in ids)
    return ObjectBatch(
        index.astype(np.int64),
        np.stack(pixels).astype(np.float32),
        np.asarray(owner, np.int32),
        np.stack(masks),
        orientation,
    )


__all__ = [
    "MIN_OBJECT_PIXELS",
    "ObjectBatch",
    "PreparedImage",
    "PreparedImages",
    "orient",
    "prepare",
    "random_orientation",
    "sample_batch",
]
