"""Stacks of 2D images (numpy only): the planes of an nD array and their labels as one array.

Layout rule (used by ``napari-sam-ms segment``): when an array has three or more axes and the
last has 1, 3 or 4 entries, that axis is colour (gray, RGB, RGBA) and the two before it are
the image plane; otherwise the last two axes are the plane. Every axis before the plane is a
stack axis, so (Z, Y, X), (T, Z, Y, X) and (Z, Y, X, 3) are stacks of 2D images while
(Y, X, 3) is one RGB image. A last axis of 2 (two channels) is refused. Channels-first
data ((3, Y, X)) reads as a stack of three planes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .image import to_rgb_uint8
from .labels import label_dtype

COLOUR_CHANNELS = (1, 3, 4)
ID_MODES = ("stack", "per-slice")
#: How a stack is segmented; a 3D mode will join ``per-slice`` here.
STACK_MODES = ("per-slice",)


class PlaneLayout(NamedTuple):
    """How an array splits into 2D images."""

    lead: tuple[int, ...]  # stack axes before the plane; () for a single 2D image
    plane: tuple[int, int]  # (H, W)
    channels: int | None  # trailing colour channels, None for a plain 2D plane

    @property
    def is_stack(self) -> bool:
        """True when there is more than the one plane of a 2D image."""
        return bool(self.lead)

    @property
    def count(self) -> int:
        """Number of planes."""
        return int(np.prod(self.lead, dtype=np.int64))

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of the label array of the whole input (colour axis dropped)."""
        return (*self.lead, *self.plane)


def plane_layout(shape: Sequence[int]) -> PlaneLayout:
    """Split an array shape into stack axes, plane and colour channels (module docstring).

    Raises:
        ValueError: fewer than two axes, or two colour channels.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 3 and shape[-1] == 2:
        raise ValueError(
            f"shape {shape}: a last axis of 2 reads as two colour channels; SAM takes gray, "
            "RGB or RGBA: save one channel, or the channels as RGB"
        )
    if len(shape) >= 3 and shape[-1] in COLOUR_CHANNELS:
        return PlaneLayout(shape[:-3], (shape[-3], shape[-2]), shape[-1])
    if len(shape) < 2:
        raise ValueError(f"expected an image with at least two axes, got shape {shape}")
    return PlaneLayout(shape[:-2], (shape[-2], shape[-1]), None)


def iter_planes(image: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield (index into the stack axes, 2D image or (H, W, C) colour image), in C order.

    A single 2D or colour image yields once, with index ().
    """
    layout = plane_layout(image.shape)
    for index in np.ndindex(*layout.lead):
        yield index, image[index]


def rgb_planes(image: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield (index, (H, W, 3) uint8 RGB) for every plane, as :func:`iter_planes` does.

    A stack's planes are scaled from one range (:func:`stack_limits`); a single image as
    :func:`napari_sam_ms.utils.image.to_rgb_uint8` does by itself.
    """
    limits = stack_limits(image) if plane_layout(image.shape).is_stack else None
    for index, plane in iter_planes(image):
        yield index, to_rgb_uint8(plane, limits)


def stack_limits(image: np.ndarray) -> tuple[float, float] | None:
    """One intensity range for every plane of a stack, so equal values look equal in all.

    Returns:
        (min, max) of the finite values for numeric types other than uint8 and bool
        (which :func:`napari_sam_ms.utils.image.to_rgb_uint8` uses as they are), else None.
    """
    if image.dtype in (np.uint8, np.bool_) or not np.issubdtype(image.dtype, np.number):
        return None
    if np.iscomplexobj(image):
        return None
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def id_offsets(counts: Sequence[int], ids: str = "stack") -> list[int]:
    """What to add to each plane's ids 1..n: running totals (``stack``) or zeros
    (``per-slice``, every plane starts at 1)."""
    if ids not in ID_MODES:
        raise ValueError(f"ids must be one of {ID_MODES}, got {ids!r}")
    if ids == "per-slice":
        return [0] * len(counts)
    return [int(v) for v in np.concatenate([[0], np.cumsum(counts, dtype=np.int64)[:-1]])]


def stack_labels(
    planes: Sequence[np.ndarray], layout: PlaneLayout, ids: str = "stack"
) -> tuple[np.ndarray, list[int]]:
    """Put per-plane label images (ids 1..n_i each, 0 background) into one array.

    Args:
        planes: one (H, W) label image per plane, in :func:`iter_planes` order.
        layout: the input's layout; the result has ``layout.labels_shape``.
        ids: ``stack`` renumbers so ids are unique across the stack (plane 0 keeps 1..n_0,
            plane 1 gets n_0+1..n_0+n_1, ...); ``per-slice`` keeps every plane's 1..n_i.

    Returns:
        The label array (uint16, or uint32 when the largest id needs it) and each plane's
        offset (its ids in the array are its own ids plus the offset).
    """
    if len(planes) != layout.count:
        raise ValueError(f"expected {layout.count} planes, got {len(planes)}")
    counts = [int(p.max()) if p.size else 0 for p in planes]
    offsets = id_offsets(counts, ids)
    top = max((c + o for c, o in zip(counts, offsets, strict=True)), default=0)
    out = np.zeros(layout.labels_shape, dtype=label_dtype(top))
    for index, plane, offset in zip(np.ndindex(*layout.lead), planes, offsets, strict=True):
        if plane.shape != layout.plane:
            raise ValueError(f"plane {index} has shape {plane.shape}, expected {layout.plane}")
        target = out[index]
        target[...] = plane
        if offset:
            target[plane > 0] += out.dtype.type(offset)
    return out, offsets


def slice_entries(
    layout: PlaneLayout,
    objects: Sequence[Sequence[dict[str, Any]]],
    offsets: Sequence[int],
    **columns: Sequence[Any],
) -> list[dict[str, Any]]:
    """A stack's per-slice report: for each plane its ``index`` into the stack axes, its
    object ``count``, one value of each of ``columns``, and its ``objects`` (rows with a
    ``label`` 1..n) with labels as in the stacked label image (offset added)."""
    entries = []
    for i, (index, rows, offset) in enumerate(
        zip(np.ndindex(*layout.lead), objects, offsets, strict=True)
    ):
        entry: dict[str, Any] = {"index": list(index), "count": len(rows)}
        entry.update({name: values[i] for name, values in columns.items()})
        entry["objects"] = [{**row, "label": int(row["label"]) + offset} for row in rows]
        entries.append(entry)
    return entries


def stack_description(layout: PlaneLayout, mode: str, ids: str) -> dict[str, Any]:
    """What a stack's sidecar adds to its ``labels`` entry."""
    return {
        "shape": list(layout.labels_shape),
        "slices": layout.count,
        "mode": mode,
        "ids": ids,
        "order_in_stack": "ids=stack: each slice's ids follow the previous slice's (C order "
        "of the stack axes), unique across the stack; ids=per-slice: every slice starts at 1",
    }


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """The ``stacks`` options of ``napari-sam-ms segment`` (``stack_mode`` and ``ids``)."""
    group = parser.add_argument_group(
        "stacks",
        "An image with more than two axes ((Z, Y, X), (T, Z, Y, X), (Z, Y, X, 3)...) is a "
        "stack of 2D planes; a last axis of 3 or 4 is colour, so (Y, X, 3) is one RGB image. "
        "The label image has the stack's shape without the colour axis; the sidecar lists "
        "each slice's objects. A stack's planes share one intensity range.",
    )
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--per-slice",
        dest="stack_mode",
        action="store_const",
        const="per-slice",
        default=STACK_MODES[0],
        help="segment every 2D plane on its own (the default for stacks)",
    )
    group.add_argument(
        "--ids",
        choices=ID_MODES,
        default="stack",
        help="stack: label ids unique across the stack, slice after slice (default); "
        "per-slice: every slice's ids start at 1",
    )


__all__ = [
    "ID_MODES",
    "STACK_MODES",
    "PlaneLayout",
    "add_cli_options",
    "id_offsets",
    "iter_planes",
    "plane_layout",
    "rgb_planes",
    "slice_entries",
    "stack_description",
    "stack_labels",
    "stack_limits",
]
