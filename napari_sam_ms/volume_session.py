"""What the Volumes widget does besides drawing, without Qt: slice embeddings and propagation.

:class:`VolumeSession` holds a widget's :class:`~napari_sam_ms.interaction.ModelHolder` and
:class:`~napari_sam_ms.embedding_cache.EmbeddingCache`. Both of its jobs key a stack's slice
embeddings the same way :func:`~napari_sam_ms.propagate.propagate_object` does (parts ``(z,)``
of kind :data:`~napari_sam_ms.propagate.KIND`, model id of the held predictor, the stack's
content id :func:`stack_id`), so :meth:`VolumeSession.precompute` run first makes the
propagation reuse every slice. With ``plane_keys`` the precomputed slices are also stored
under the key the Prompt widget looks up for a shown slice (:func:`plane_key`), so its clicks
reuse them when both widgets share the cache, or through the disk cache for real weights.
Slices larger than the model's input are precomputed tile by tile, keyed as propagation
through tiles finds them (:class:`~napari_sam_ms.tiled.TiledPredictor`): at most
:data:`TILES_IN_MEMORY` stay in memory, the rest on disk (real weights).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .embedding_cache import EmbeddingCache, image_key
from .engine import background_job
from .interaction import HeldModel, ModelHolder, Report
from .progress import Cancelled
from .propagate import DEFAULT_PROMPT, IOU_STOP, KIND, Propagation, propagate_object
from .tiled import slice_tiles
from .tiled_slices import AUTO, use_tiles
from .utils.image import to_rgb_uint8
from .utils.stacks import stack_limits
from .utils.tiling import TileGrid
from .volumes.stack_key import stack_id

Limits = tuple[float, float] | None
TILES_IN_MEMORY = 256  # tile embeddings a tiled precompute keeps in memory (micro: ~1.5 MB)


class Precomputed(NamedTuple):
    """How a precompute went."""

    total: int  # slices in the stack
    computed: int  # embedded now (tiles when tiled)
    reused: int  # found in the cache (tiles when tiled)
    tiled: bool = False  # slices this large are answered through tiles
    tiles: int = 0  # tiles per slice when tiled


def plane_key(rgb: np.ndarray, held: HeldModel) -> str:
    """The cache key of one shown plane's model input, as the Prompt widget's session uses
    it (:class:`~napari_sam_ms.interaction.PromptSession`: not inverted)."""
    return image_key(rgb, held.model_id)


class VolumeSession:
    """Slice embeddings and propagation of one widget; used by one worker at a time.

    Args:
        holder: the widget's model holder.
        cache: the embedding cache (shared with propagation; its memory is grown to hold a
            whole stack).
    """

    def __init__(self, holder: ModelHolder, cache: EmbeddingCache) -> None:
        self.holder = holder
        self.cache = cache

    def _fit(self, n: int) -> None:
        """Let the memory cache hold every slice of an ``n``-slice stack (and a few more)."""
        self.cache.max_items = max(self.cache.max_items, n + 8)

    def precompute(
        self, stack: np.ndarray, limits: Limits, report: Report, plane_keys: bool = True
    ) -> Precomputed:
        """Embed every slice of ``stack`` (axis 0) that is not cached yet.

        Args:
            stack: (N, H, W) or (N, H, W, C).
            limits: the contrast range every slice is converted with (None: the stack's
                range, uint8 and bool as they are: as propagation does).
            report: ``report(done, total)`` per slice; False cancels.
            plane_keys: also store each slice under :func:`plane_key` (Prompt widget reuse).

        Raises:
            Cancelled: ``report`` returned False.
        """
        report(0, 0)
        held = self.holder.get()
        n = int(stack.shape[0])
        limits = limits if limits is not None else stack_limits(stack)  # as propagation
        if use_tiles(AUTO, 1, stack.shape[1:3], held.predictor):
            return self._precompute_tiles(stack, limits, report, held)
        self._fit(2 * n if plane_keys else n)
        image_id, model = stack_id(stack, limits), held.model_id
        computed = 0
        with background_job(held.predictor):  # gives way to the user's calls
            for z in range(n):
                if report(z, n) is False:
                    raise Cancelled(f"precompute cancelled after {z} of {n} slices")
                args = (image_id, model, KIND, (z,), (n,))
                emb = self.cache.get_part(*args)
                rgb = to_rgb_uint8(stack[z], limits) if emb is None or plane_keys else None
                if emb is None:
                    held.predictor.set_image(rgb)
                    emb = held.predictor.embedding
                    self.cache.put_part(*args, emb, persist=held.persistent)
                    computed += 1
                if plane_keys:
                    key = plane_key(rgb, held)
                    if self.cache.get(key, model) is None:
                        self.cache.put(key, emb, model, held.persistent)
        report(n, n)
        return Precomputed(n, computed, n - computed)

    def _precompute_tiles(self, stack, limits, report: Report, held: HeldModel) -> Precomputed:
        """Every tile of every slice, as :meth:`propagate` through tiles keys them (the
        same tiling, contrast and model id); ``report`` counts tiles."""
        tiles = slice_tiles(held.predictor, self.cache, held.model_id, held.persistent)
        n = int(stack.shape[0])
        per = len(TileGrid(stack.shape[1:3], tiles.tile_shape, tiles.halo))
        total = n * per
        self.cache.max_items = max(self.cache.max_items, min(total, TILES_IN_MEMORY) + 8)
        with background_job(held.predictor):  # gives way to the user's calls
            for z in range(n):
                tiles.set_image(to_rgb_uint8(stack[z], limits))
                assert tiles.grid is not None  # set by set_image
                for k, tile in enumerate(tiles.grid.tiles):
                    done = z * per + k
                    if report(done, total) is False:
                        raise Cancelled(f"precompute cancelled after {done} of {total} tiles")
                    tiles.embed_tile(tile)
        report(total, total)
        return Precomputed(n, tiles.embedded, total - tiles.embedded, tiled=True, tiles=per)

    def propagate(
        self,
        stack: np.ndarray,
        limits: Limits,
        annotated: np.ndarray,
        report: Report,
        prompt: str = DEFAULT_PROMPT,
        iou_stop: float = IOU_STOP,
        **options: Any,
    ) -> Propagation:
        """Propagate the object of ``annotated`` (bool, the stack's spatial shape; its
        non-empty slices are the annotated ones) through axis 0 of ``stack``.

        Raises:
            PropagationCancelled: ``report`` returned False (``.result``: slices done).
            ValueError: as :func:`~napari_sam_ms.propagate.propagate_object`.
        """
        report(0, 0)
        held = self.holder.get()
        self._fit(int(stack.shape[0]))
        return propagate_object(
            stack,
            mask=annotated,
            model=held.loaded,
            predictor=held.predictor,
            axis=0,
            prompt=prompt,
            iou_stop=iou_stop,
            contrast_limits=limits,
            progress=report,
            cache=self.cache,
            image_id=stack_id(stack, limits),
            tile_shape=AUTO,  # large slices through tiles, at their own resolution
            **options,
        )


__all__ = ["Precomputed", "VolumeSession", "plane_key"]
