"""What the Volumes widget does besides drawing, without Qt: slice embeddings and propagation.

:class:`VolumeSession` holds a widget's :class:`~napari_sam_ms.interaction.ModelHolder` and
:class:`~napari_sam_ms.embedding_cache.EmbeddingCache`. Both of its jobs key a stack's slice
embeddings the same way :func:`~napari_sam_ms.propagate.propagate_object` does (parts ``(z,)``
of kind :data:`~napari_sam_ms.propagate.KIND`, model id of the held predictor, the stack's
content id :func:`stack_id`), so :meth:`VolumeSession.precompute` run first makes the
propagation reuse every slice. With ``plane_keys`` the precomputed slices are also stored
under the key the Prompt widget looks up for a shown slice (:func:`plane_key`), so its clicks
reuse them when both widgets share the cache, or through the disk cache for real weights.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .embedding_cache import EmbeddingCache, image_key
from .engine import background_job
from .interaction import HeldModel, ModelHolder, Report
from .progress import Cancelled
from .propagate import DEFAULT_PROMPT, IOU_STOP, KIND, Propagation, propagate_object
from .tiled_slices import AUTO, use_tiles
from .utils.image import to_rgb_uint8
from .utils.stacks import stack_limits
from .volumes.stack_key import stack_id

Limits = tuple[float, float] | None


class Precomputed(NamedTuple):
    """How a precompute went."""

    total: int  # slices in the stack
    computed: int  # embedded now
    reused: int  # found in the cache
    tiled: bool = False  # slices this large are answered through tiles: nothing precomputed


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
        if use_tiles(AUTO, 1, stack.shape[1:3], held.predictor):
            return Precomputed(n, 0, 0, tiled=True)  # propagation embeds the tiles it needs
        limits = limits if limits is not None else stack_limits(stack)  # as propagation
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
