"""The Automatic widget's *Segment volume*: every slice of a stack, linked into 3D objects.

The work is :func:`napari_sam_ms.segment_volume.segment_volume` in the widget's worker (progress
per slice, Cancel between batches of points); the result is a new Labels layer
``SAM volume (<image>)`` with the image's scale, so nothing the user made is overwritten. A
4D (t, z, y, x) image is segmented at the time point shown. Slices are tiled as the widget's
*Large images* controls say for a plane of their size (at their own resolution).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_sam_ms.segment_volume import VolumeSegmentation, segment_volume

NO_STACK = "Segment volume needs a z-stack (3D image, or 4D with time first): for one plane use Run"


class VolumeError(ValueError):
    """The chosen layer cannot be segmented as a volume (the message says what to do)."""


def stack_of(layer: Image, current_step: tuple[int, ...]) -> tuple[np.ndarray, tuple, str]:
    """(the (Z, Y, X[, C]) stack, unread if lazy; its 3 spatial axes in the layer; a note).

    Raises:
        VolumeError: no image, a multiscale one, a 2D one or more than 4 spatial axes.
    """
    if layer is None:
        raise VolumeError("Choose an image layer first")
    if layer.multiscale:
        raise VolumeError("Segment volume does not take multiscale images: open one level")
    ndim = layer.ndim  # spatial axes (an RGB layer's colour axis is not one)
    if ndim == 3:  # read in the worker (a dask or zarr layer is not read here)
        return layer.data, (0, 1, 2), ""
    if ndim == 4:
        t = int(current_step[0])
        return layer.data[t], (1, 2, 3), f" at time point {t}"
    raise VolumeError(NO_STACK)


class VolumeAction:
    """Runs *Segment volume* for an Automatic widget.

    Args:
        viewer: the napari viewer.
        runner: the widget's :class:`~napari_sam_ms._qt.workers.TaskRunner`.
        holder: the widget's model holder.
        cache: the widget's embedding cache (slice embeddings, shared with propagation).
        notify: the widget's notifier; ``status`` sets its status line.
        choose_tiles: ``choose(plane shape)`` -> (TileSpec or None, one line): the widget's
            tiling for slices of that shape (:meth:`TileControls.choose`); None: no tiles.
    """

    def __init__(
        self, viewer, runner, holder, cache, notify, status: Callable[[str], Any],
        choose_tiles: Callable[[tuple[int, int]], tuple[Any, str]] | None = None,
    ):  # fmt: skip
        self._viewer, self._runner, self._holder = viewer, runner, holder
        self._cache, self._notify, self._status = cache, notify, status
        self._choose_tiles = choose_tiles
        self.layer: Labels | None = None  # the last result

    def start(self, image: Image | None, settings: dict[str, Any]) -> None:
        """Check the image, then segment its stack in the worker."""
        try:
            stack, axes, note = stack_of(image, tuple(self._viewer.dims.current_step))
            settings, tiling = self._tiled(settings, tuple(stack.shape[1:3]))
        except (VolumeError, ValueError) as exc:
            self._notify.error(str(exc))
            self._status(str(exc))
            return
        limits = tuple(float(v) for v in image.contrast_limits)
        scale = tuple(float(image.scale[a]) for a in axes)
        self._status(f"Segmenting {stack.shape[0]} slices{note}{tiling}...")
        self._runner.submit(
            partial(self._job, stack, limits, scale, settings),
            on_done=partial(self._done, image, axes, note),
            on_error=self._failed,
            on_cancel=lambda: self._status("Cancelled: nothing written"),
            desc="SAM: segmenting a volume",
        )

    def _tiled(self, settings: dict[str, Any], plane: tuple[int, int]) -> tuple[dict, str]:
        """The settings with the tiles chosen for slices of ``plane`` shape, and a note."""
        spec = None if self._choose_tiles is None else self._choose_tiles(plane)[0]
        if spec is None:
            return settings, ""
        return {**settings, **spec.generator_settings()}, f" through {spec.tile_shape[0]} px tiles"

    def _job(self, stack, limits, scale, settings, report) -> VolumeSegmentation:
        """Worker side."""
        report(0, stack.shape[0])
        held = self._holder.get()
        return segment_volume(
            np.asarray(stack),
            held.loaded,
            scale=scale,
            contrast_limits=limits,
            progress=report,
            cache=self._cache,
            **settings,
        )

    def _done(self, image: Image, axes: tuple, note: str, result: VolumeSegmentation) -> None:
        self.layer = self._viewer.add_labels(
            result.labels,
            name=f"SAM volume ({image.name})",
            scale=[image.scale[a] for a in axes],
            translate=[image.translate[a] for a in axes],
        )
        self._status(
            f"{result.count} 3D object(s){note} in '{self.layer.name}' "
            f"({result.dropped} dropped: on fewer slices or smaller than the minimum)"
        )

    def _failed(self, exc: BaseException) -> None:
        self._notify.job_error(exc)
        self._status("Failed (see notification)")


__all__ = ["NO_STACK", "VolumeAction", "VolumeError", "stack_of"]
