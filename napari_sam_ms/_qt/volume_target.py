"""The stack a propagation runs on, cut from napari layers, and the undoable write back.

Runs on the UI thread (it reads the layers) and hands plain numpy to the workers. An image of
n spatial axes has n - 2 stack axes; one is propagated along, the others stay at the slice
the viewer shows (e.g. the current time point of a (t, z, y, x) image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam_ms.bridge import world_to_index

from .common import NO_IMAGE
from .image_target import TargetError, check_layer, contrast_limits, level_frame, spatial_ndim

Limits = tuple[float, float] | None


def stack_axes(layer: Any) -> list[tuple[str, int]]:
    """(name, axis) of the image's stack axes (those before the plane); [] for 2D."""
    if layer is None:
        return []
    nd = spatial_ndim(layer)
    names = list(getattr(layer, "axis_labels", ()) or ())[-nd:] if nd else []
    shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)[:nd]
    out = []
    for axis in range(max(0, nd - 2)):
        name = names[axis] if axis < len(names) else ""
        if not name or name.lstrip("-").isdigit():  # napari's default labels: "-3", "0"...
            name = f"axis {axis}"
        out.append((f"{name} ({shape[axis]} slices)", axis))
    return out


@dataclass
class VolumeTarget:
    """One 3D stack of an image and the matching stack of its labels layer.

    Attributes:
        image, labels: the napari layers.
        axis: the layer axis propagated along.
        index: indices into the layers' data cutting the stack out (ints for the other
            stack axes, ``slice(None)`` for ``axis`` and the plane).
        stack: (N, H, W[, C]) image data, ``axis`` first (a copy: the worker's input).
        limits: the contrast range of the model input (the image layer's).
    """

    image: Any
    labels: Any
    axis: int
    index: tuple
    stack: np.ndarray
    limits: Limits

    @property
    def label_stack(self) -> np.ndarray:
        """The labels of the stack, (N, H, W) (read now: the user may have edited them)."""
        return np.asarray(self.labels.data[self.index])

    def where(self) -> str:
        """Which stack, for messages: ``axis 1 at t=3``."""
        fixed = [f"axis {a}={i}" for a, i in enumerate(self.index) if isinstance(i, int)]
        return f"axis {self.axis}" + (f" at {', '.join(fixed)}" if fixed else "")


def resolve_volume(
    image: Any, labels: Any, axis: int | None, world_point: Any, need_labels: bool = True
) -> VolumeTarget:
    """The stack of ``image`` along ``axis`` through the viewer's point, and ``labels``'
    (``need_labels=False``: the labels layer is not needed, e.g. to precompute).

    Raises:
        TargetError: no image, a 2D image, a multiscale image, no labels layer, a labels
            layer of another shape, an axis that is not a stack axis.
    """
    if image is None:
        raise TargetError(NO_IMAGE)
    check_layer(image)
    nd = spatial_ndim(image)
    if nd < 3:
        raise TargetError(
            f"'{image.name}' is a 2D image: propagation needs a stack (z-stack or time-lapse, "
            "3D or more). For one plane use 'Segment with prompts'."
        )
    if image.multiscale:
        raise TargetError(
            f"'{image.name}' is multiscale: propagation runs on single-resolution stacks only; "
            "open its full-resolution level as a plain image."
        )
    shape = tuple(int(s) for s in image.data.shape[:nd])
    if labels is None and need_labels:
        raise TargetError(
            "No labels layer: commit an object with 'Segment with prompts' first (it makes "
            "'SAM labels'), or choose the labels layer holding the object under 'Labels'."
        )
    if labels is not None and (labels.multiscale or tuple(labels.data.shape) != shape):
        raise TargetError(
            f"The labels layer '{labels.name}' has shape {tuple(labels.data.shape)} but the "
            f"image '{image.name}' has {shape}: choose a labels layer of the image's shape."
        )
    if axis is None or not 0 <= int(axis) < nd - 2:
        raise TargetError(f"Choose the axis to propagate along (one of 0..{nd - 3}).")
    axis = int(axis)
    here = world_to_index(_pad(world_point, nd), level_frame(image, 0))
    index: list[Any] = []
    for a in range(nd - 2):
        if a == axis:
            index.append(slice(None))
        elif not 0 <= here[a] < shape[a]:
            raise TargetError(
                f"The viewer shows a slice outside '{image.name}' (axis {a}: index {here[a]} "
                f"of {shape[a]}); move the slider onto the image."
            )
        else:
            index.append(int(here[a]))
    index += [slice(None), slice(None)]
    stack = np.array(image.data[tuple(index)])
    return VolumeTarget(image, labels, axis, tuple(index), stack, contrast_limits(image, stack))


def _pad(world_point: Any, n: int) -> np.ndarray:
    p = np.asarray(world_point, float).reshape(-1)
    return np.concatenate([np.zeros(max(0, n - len(p))), p])[-n:]


def write_object(target: VolumeTarget, where: np.ndarray, label: int) -> int:
    """Set the voxels ``where`` (the stack's (N, H, W) shape) of the labels layer to
    ``label`` as ONE undo step (one ``data_setitem`` in ``block_history``); the count."""
    layer = target.labels
    zs, rows, cols = np.nonzero(where)
    if zs.size == 0:
        return 0
    full = []
    for i in target.index[:-2]:
        full.append(zs.astype(np.intp) if isinstance(i, slice) else np.full(zs.size, i, np.intp))
    with layer.block_history():
        layer.data_setitem((*full, rows, cols), int(label))
    return int(zs.size)


__all__ = ["VolumeTarget", "resolve_volume", "stack_axes", "write_object"]
