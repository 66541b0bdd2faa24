"""Volumetric automatic segmentation: whole-image mode on every slice, then 3D objects.

::

    from napari_sam_ms.segment_volume import segment_volume

    result = segment_volume(stack, scale=(2.0, 0.5, 0.5), min_size=40)
    result.labels        # the stack's spatial shape, 3D objects 1..N (largest first)

Every slice along ``axis`` is segmented as :func:`napari_sam_ms.pipeline` segments a whole
image (the same model choice through :func:`~napari_sam_ms.loader.load_model`, the model's
whole-image defaults, overridden by keyword arguments), all slices converted to 8-bit RGB
with one contrast range for the whole stack. Each slice's masks become a label image
(:func:`~napari_sam_ms.utils.paint.paint_labels`, tiled or not), and
:func:`~napari_sam_ms.volumes.match3d.match_slices` links them across neighbouring slices
by IoU with linear assignment (``min_iou``, ``max_gap``, ``min_size``, ``min_slices`` and
``scale`` as it takes them; defaults :data:`~napari_sam_ms.volumes.match3d.AUTOMATIC`:
links at IoU 0.5, across one missing slice, objects on at least three slices).

Slice embeddings are kept in an :class:`~napari_sam_ms.embedding_cache.EmbeddingCache` as
parts ``(z,)`` of kind ``slices`` under the stack's id, as :mod:`napari_sam_ms.propagate`
keeps them (the same default id: propagation on the same stack and cache reuses them; an
inverted run keeps its own). Progress is ``progress(slices done, slices)``; cancel (a False
from ``progress`` or ``cancel()`` True, asked between batches of points) raises
:class:`VolumeCancelled`.

Slices larger than the model's input can be segmented at their own resolution through tiles
(``tile_shape``, ``halo``, ``zoom`` as ``pipeline(...)`` takes them; ``"auto"`` tiles slices
larger than about 1.5x the model input). Each tile's embedding is cached per slice as
:class:`~napari_sam_ms.tiled.TiledPredictor` keeps it, so propagation through tiles on the same
slices (same tiling and contrast) reuses them, and the other way round.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import amg_settings
from .automatic_mask_generator import GenerationCancelled, SamAutomaticMaskGenerator
from .embedding_cache import EmbeddingCache
from .loader import LoadedModel, embedding_id, load_model
from .progress import Cancelled, ProgressCallback
from .tiled import slice_tiles
from .utils.image import to_rgb_uint8
from .utils.labels import label_dtype
from .utils.paint import paint_labels
from .utils.stacks import plane_layout, stack_limits
from .utils.tiling import plane_tiling
from .volumes.match3d import AUTOMATIC, check_options, match_slices
from .volumes.stack_key import stack_id

KIND = "slices"  # the embedding cache's kind of parts (as propagate's)
TILE_SETTINGS = ("tile_shape", "halo", "zoom")


@dataclass(frozen=True)
class VolumeSegmentation:
    """3D objects of a stack and how they were made.

    Attributes:
        labels: the stack's spatial shape, 0 background, objects 1..N by decreasing volume
            (uint16, or uint32 past 65535 objects).
        count: N.
        per_slice: the slices' own label images, stack axis first (ids 1..n per slice).
        masks_found: masks the generator returned on each slice.
        seconds: seconds each slice took (embedding and generator).
        links: (z0, z1, IoU) of each link between slices.
        dropped: 3D objects below ``min_size``.
        parameters: the whole-image settings used (empty for a generator given as is).
    """

    labels: np.ndarray
    count: int
    per_slice: np.ndarray
    masks_found: tuple[int, ...]
    seconds: tuple[float, ...]
    links: tuple[tuple[int, int, float], ...]
    dropped: int
    parameters: dict[str, Any]


class VolumeCancelled(Cancelled):
    """Volume segmentation stopped on request; ``slices_done`` slices were segmented."""

    def __init__(self, slices_done: int, total: int) -> None:
        super().__init__(f"volume segmentation cancelled after {slices_done} of {total} slices")
        self.slices_done = slices_done


def segment_volume(
    volume: Any,
    model: str | LoadedModel | None = None,
    checkpoint: str | os.PathLike | None = None,
    axis: int = 0,
    scale: Sequence[float] | None = None,
    min_iou: float = AUTOMATIC["min_iou"],
    min_size: float = 0,
    max_gap: int = AUTOMATIC["max_gap"],
    min_slices: int = AUTOMATIC["min_slices"],
    contrast_limits: tuple[float, float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    cache: EmbeddingCache | None = None,
    image_id: str | None = None,
    generator: SamAutomaticMaskGenerator | None = None,
    tile_shape: int | tuple[int, int] | str | None = None,
    halo: int | tuple[int, int] | None = None,
    zoom: int = 1,
    **amg_params: Any,
) -> VolumeSegmentation:
    """Segment every slice of a stack and merge the slices' objects into 3D objects.

    Args:
        volume: (Z, Y, X) or (Z, Y, X, C) with C of 1, 3 or 4 (colour last).
        model, checkpoint: the model as :func:`napari_sam_ms.pipeline` takes it (default: the
            default model), or a :class:`~napari_sam_ms.loader.LoadedModel`.
        axis: the stack axis among the spatial axes; the other two are the slice plane.
        scale: spacing of the spatial axes in their order (a napari layer's ``scale``); it
            makes ``min_size`` a physical volume (see :mod:`~napari_sam_ms.volumes.match3d`).
        min_iou: the least IoU that links objects of neighbouring slices.
        min_size: the least volume of a 3D object (voxels without ``scale``).
        max_gap: link objects across up to this many slices where they are missing.
        min_slices: the least number of slices a 3D object spans.
        contrast_limits: one intensity range for all slices (default: the stack's min..max).
        progress: ``progress(done, total)`` per slice; returning False cancels.
        cancel: asked between batches of points; True cancels.
        cache, image_id: the slice embeddings' cache and the stack's id in it (default: a
            private memory cache; the id propagate gives the same stack).
        generator: a whole-image generator to use as it is, tiled or not (then no model,
            settings or tiles).
        tile_shape, halo, zoom: tiles of each slice (None: whole slices shrunk to the model
            input; ``"auto"``: tiles when slices are larger than about 1.5x the model input).
        amg_params: whole-image settings (:data:`napari_sam_ms.pipeline.AMG_DEFAULTS`) over
            the model's own.

    Returns:
        A :class:`VolumeSegmentation`.

    Raises:
        ValueError: a 2D image, a 4D one, a bad ``axis``, an unknown setting, or tiles with
            a generator given.
        VolumeCancelled: cancelled.
    """
    stack, axis = _stack(np.asarray(volume), axis)
    voxel = None if scale is None else _spatial_scale(scale, axis)
    check_options(min_iou, voxel, max_gap, min_slices)
    tiles = (tile_shape, halo, zoom)
    loaded, generator, params = _generator(model, checkpoint, generator, amg_params, tiles, stack)
    if contrast_limits is None:
        contrast_limits = stack_limits(stack)
    n = stack.shape[0]
    if cache is None:  # (an empty cache is falsy: it has a length)
        cache = EmbeddingCache(cache_dir=False, max_items=max(16, n))
    image_id = image_id or stack_id(stack, contrast_limits)
    if generator.invert:
        image_id += "|inverted"
    model_id = f"given:{uuid.uuid4().hex}"
    if loaded is not None:
        model_id = embedding_id(loaded, generator.predictor)
    persist = bool(loaded is not None and not loaded.random_weights)
    own_predictor = generator.predictor
    tiled = embeddings = embed = None
    if generator.tile_shape is not None:  # each slice's tiles cached as propagation keeps them
        tiled = slice_tiles(own_predictor, cache, model_id, persist, generator.tile_shape,
                            generator.halo, generator.zoom, generator.invert)  # fmt: skip
        embed = tiled.embed_tile
    else:  # the generator's images come from the cache
        embeddings = SliceEmbeddings(own_predictor, cache, image_id, model_id, n, persist)
        generator.predictor = embeddings
    per_slice, found, seconds = [], [], []
    try:
        for z in range(n):
            start = time.perf_counter()
            rgb = to_rgb_uint8(stack[z], contrast_limits)
            if tiled is not None:
                tiled.set_image(rgb)
            else:
                embeddings.z, embeddings.plane = z, rgb.shape[:2]
            try:
                records = generator.generate(rgb, progress=_batches(cancel), embed=embed)
            except GenerationCancelled:
                raise VolumeCancelled(z, n) from None
            # (tiled records of large slices hold masks cropped to their boxes)
            per_slice.append(paint_labels(records, rgb.shape[:2])[0].astype(np.uint32))
            found.append(len(records))
            seconds.append(round(time.perf_counter() - start, 3))
            if progress is not None and progress(z + 1, n) is False and z + 1 < n:
                raise VolumeCancelled(z + 1, n)
    finally:
        generator.predictor = own_predictor
    slices = np.stack(per_slice)
    matched = match_slices(slices, min_iou, min_size, voxel, max_gap, min_slices)
    labels = np.moveaxis(matched.labels.astype(label_dtype(matched.count)), 0, axis)
    return VolumeSegmentation(
        labels, matched.count, slices.astype(label_dtype(int(slices.max(initial=0)))),
        tuple(found), tuple(seconds), matched.links, matched.dropped, params,
    )  # fmt: skip


class SliceEmbeddings:
    """The generator's predictor, with each whole slice's embedding kept in a cache.

    The generator calls :meth:`set_image` with slice ``z``'s model input (a crop of it when
    ``crop_n_layers`` > 0: crops are embedded as usual, not cached); everything else goes
    to the predictor itself.
    """

    def __init__(
        self, predictor: Any, cache: EmbeddingCache, image_id: str, model_id: str, n: int,
        persist: bool,
    ) -> None:  # fmt: skip
        self.predictor, self.cache = predictor, cache
        self.key = (image_id, model_id, KIND)
        self.n, self.persist = n, persist
        self.z: int = 0
        self.plane: tuple[int, int] = (0, 0)
        self.computed = 0  # slices embedded here (not found in the cache)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        whole = tuple(image.shape[:2]) == tuple(self.plane) and image_format == "RGB"
        args = (*self.key, (self.z,), (self.n,))
        emb = self.cache.get_part(*args) if whole else None
        if emb is not None:
            self.predictor.set_embedding(emb)
            return
        self.predictor.set_image(image, image_format)
        if whole:
            self.computed += 1
            self.cache.put_part(*args, self.predictor.embedding, persist=self.persist)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)


# ------------------------------------------------------------------ inputs


def _generator(
    model, checkpoint, generator, amg_params, tiles, stack
) -> tuple[Any, Any, dict[str, Any]]:
    """(the model's record or None, the whole-image generator, its settings) as the
    pipeline makes them, with the tiles asked for the stack's slices."""
    if generator is not None:
        if model is not None or checkpoint is not None or amg_params:
            raise ValueError("give a generator, or a model choice with settings, not both")
        if tiles != (None, None, 1):
            raise ValueError("give the tiles to the generator given (its tile_shape...)")
        return None, generator, {}
    loaded = model if isinstance(model, LoadedModel) else load_model(model, checkpoint)
    params = {**loaded.whole_image_defaults, **amg_params}
    amg_settings.check_names(params)
    params = {k: v for k, v in params.items() if k not in TILE_SETTINGS}
    params.update(plane_tiling(*tiles, stack.shape[1:3], int(loaded.model.image_encoder.img_size)))
    return loaded, SamAutomaticMaskGenerator(loaded.model, **params), params


def _stack(volume: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """(Z, H, W[, C]) view with the stack axis first, and the axis."""
    layout = plane_layout(volume.shape)
    if not layout.is_stack:
        raise ValueError(
            f"volume segmentation needs a stack: got a 2D image of shape {volume.shape}; "
            "segment a single image with pipeline(...) (seg_image=True) instead"
        )
    if len(layout.lead) > 1:
        raise ValueError(
            f"volume segmentation takes a 3D stack (Z, Y, X) or (Z, Y, X, C), got shape "
            f"{volume.shape}: pass one stack of it, e.g. volume[t]"
        )
    if not -3 <= int(axis) < 3:
        raise ValueError(f"axis {axis} is not an axis of a (Z, Y, X) stack: use 0, 1 or 2")
    axis = int(axis) % 3
    stack = np.moveaxis(volume, axis, 0)
    if min(stack.shape[:3]) == 0:
        raise ValueError(f"the stack is empty (shape {volume.shape})")
    return stack, axis


def _spatial_scale(scale: Sequence[float], axis: int) -> tuple[float, ...]:
    """The scale of the spatial axes reordered with ``axis`` first."""
    values = tuple(float(v) for v in np.asarray(scale, np.float64).ravel())
    if len(values) != 3:
        raise ValueError(f"scale must give the (z, y, x) spacing of the stack, got {scale!r}")
    order = [axis] + [i for i in range(3) if i != axis]
    return tuple(values[i] for i in order)


def _batches(cancel: Callable[[], bool] | None) -> ProgressCallback | None:
    """The generator's progress callback: False (stop) when ``cancel()`` says so."""
    if cancel is None:
        return None
    return lambda done, total: not cancel()


__all__ = ["VolumeCancelled", "VolumeSegmentation", "segment_volume"]
