"""What the model sees of a napari image layer: the shown 2D slice of one resolution level.

Runs on the UI thread (it reads the layer), hands plain numpy to the workers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from napari_sam_ms.bridge import Frame, world_to_index
from napari_sam_ms.utils.image import invert_for_model, to_rgb_uint8
from napari_sam_ms.utils.plane_source import PlaneSource

MAX_SIDE = 2048  # use the finest multiscale level whose plane fits in this many pixels
MIN_SIDE = 8  # smaller planes are almost surely channels mistaken for image axes


class TargetError(ValueError):
    """The image cannot be segmented as it is; the message tells the user why."""


@dataclass
class ImageTarget:
    """The image plane handed to SAM and where its results go.

    Attributes:
        layer: the napari Image layer.
        level: multiscale level used (0 for plain images).
        frame: data frame of that level (spatial axes): ``world = index * scale + translate``.
        spatial_shape: shape of that level without an RGB(A) axis.
        slice_index: leading indices of the shown plane (empty for 2D).
        rgb: (H, W, 3) uint8 model input (through the layer's contrast limits; ``255 - it``
            when ``inverted``). Its content keys the embedding cache, so inverted and plain
            inputs never share an embedding.
        inverted: the model input is the inverted plane (the layer itself is untouched).
        source: tiled targets: the plane at level 0, read lazily (``rgb`` is then empty).
        tiles: tiled targets: the :class:`~napari_sam_ms.interaction.TileSpec`.
        stack_id: tiled targets of nD layers: gives the stack's cache id (slow: call it in
            a worker); None for 2D layers.
    """

    layer: Any
    level: int
    frame: Frame
    spatial_shape: tuple[int, ...]
    slice_index: tuple[int, ...]
    rgb: np.ndarray
    inverted: bool = False
    source: PlaneSource | None = None
    tiles: Any = None
    stack_id: Callable[[], str] | None = None

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.spatial_shape[-2:])  # type: ignore[return-value]

    @property
    def key_extra(self) -> tuple:
        return (self.level, self.slice_index, self.inverted)


def spatial_ndim(layer: Any) -> int:
    return int(layer.ndim)


def level_shapes(layer: Any) -> list[tuple[int, ...]]:
    """Spatial shape of each level (one entry for a plain image)."""
    nd = spatial_ndim(layer)
    levels = layer.data if layer.multiscale else [layer.data]
    return [tuple(int(s) for s in d.shape[:nd]) for d in levels]


def pick_level(shapes: list[tuple[int, ...]], max_side: int = MAX_SIDE) -> int:
    """The finest level whose plane fits ``max_side``, else the coarsest."""
    for i, shape in enumerate(shapes):
        if max(shape[-2:]) <= max_side:
            return i
    return len(shapes) - 1


def level_frame(layer: Any, level: int) -> Frame:
    """Data frame of a level, from the layer's scale and translate."""
    base = Frame.of(layer.scale, layer.translate)
    if level == 0:
        return base
    shapes = level_shapes(layer)
    factors = np.asarray(shapes[0], float) / np.asarray(shapes[level], float)
    return base.level(factors)


def check_layer(layer: Any) -> None:
    """Refuse what SAM cannot take, with a message that says what to do."""
    dtype = np.dtype(layer.dtype)
    if dtype.kind not in "biuf":  # napari refuses most others, but dask/zarr may not
        raise TargetError(
            f"'{layer.name}' has dtype {dtype}, which SAM cannot read: convert it to integers "
            "or floats (for complex data, e.g. np.abs)."
        )
    if spatial_ndim(layer) < 2:
        raise TargetError(f"'{layer.name}' is not an image of at least two dimensions.")
    plane = level_shapes(layer)[0][-2:]
    if min(plane) < MIN_SIDE:
        raise TargetError(
            f"'{layer.name}' has image planes of only {plane[0]} x {plane[1]} pixels. If its "
            "last axis holds channels, split them (right-click the layer > Split Stack) or "
            "open the file with the channel axis declared."
        )
    if not _is_trivial_transform(layer):
        raise TargetError(
            f"'{layer.name}' is rotated, sheared or has an affine transform; only scale and "
            "translate are supported. Reset them (Layer > Transform) to segment it."
        )


def _is_trivial_transform(layer: Any) -> bool:
    nd = spatial_ndim(layer)
    eye = np.eye(nd)
    rotate = np.asarray(getattr(layer, "rotate", eye), float)
    shear = np.asarray(getattr(layer, "shear", np.zeros(0)), float)
    affine = getattr(layer, "affine", None)
    aff = np.asarray(affine.affine_matrix if affine is not None else np.eye(nd + 1), float)
    return np.allclose(rotate, eye) and np.allclose(shear, 0) and np.allclose(aff, np.eye(nd + 1))


def resolve_target(
    layer: Any, world_point: Any, max_side: int = MAX_SIDE, invert: bool = False
) -> ImageTarget:
    """The shown plane of ``layer`` at the viewer's ``world_point`` (``viewer.dims.point``);
    with ``invert`` the model input is ``255 - rgb`` (for dark objects on a bright ground)."""
    check_layer(layer)
    shapes = level_shapes(layer)
    level = pick_level(shapes, max_side)
    frame = level_frame(layer, level)
    spatial = shapes[level]
    index = _slice_index(layer, world_point, frame, spatial)
    data = layer.data[level] if layer.multiscale else layer.data
    plane = np.asarray(data[tuple(index)])
    limits = contrast_limits(layer, plane)
    try:
        rgb = to_rgb_uint8(plane, limits)
    except ValueError as exc:
        raise TargetError(f"cannot segment '{layer.name}': {exc}") from exc
    if invert:
        rgb = invert_for_model(rgb)
    return ImageTarget(layer, level, frame, spatial, tuple(index), rgb, bool(invert))


def _slice_index(layer: Any, world_point: Any, frame: Frame, spatial: tuple) -> tuple[int, ...]:
    lead = len(spatial) - 2
    index = world_to_index(_pad(world_point, len(spatial)), frame)[:lead]
    for axis, (i, n) in enumerate(zip(index, spatial[:lead], strict=True)):
        if not 0 <= i < n:
            raise TargetError(
                f"the viewer shows a slice outside '{layer.name}' (axis {axis}: index {i} of "
                f"{n}); move the slider onto the image."
            )
    return tuple(int(i) for i in index)


def resolve_chosen(
    layer: Any,
    world_point: Any,
    choose: Callable[[tuple[int, int]], tuple[Any, str]],
    sources: LayerSources,
    max_side: int = MAX_SIDE,
    invert: bool = False,
) -> ImageTarget:
    """:func:`resolve_tiled_target` when ``choose(level-0 plane shape)`` gives tiles, else
    :func:`resolve_target` (today's plane of at most ``max_side`` px)."""
    check_layer(layer)
    try:
        tiles, _ = choose(level_shapes(layer)[0][-2:])
    except ValueError as exc:
        raise TargetError(f"Tile settings: {exc}") from exc
    if tiles is None:
        return resolve_target(layer, world_point, max_side, invert)
    return resolve_tiled_target(layer, world_point, tiles, sources, invert)


def full_plane_shape(layer: Any) -> tuple[int, int] | None:
    """(H, W) of a layer's full-resolution plane, or None when it is no image SAM takes."""
    try:
        check_layer(layer)
    except TargetError:
        return None
    return level_shapes(layer)[0][-2:]  # type: ignore[return-value]


def resolve_tiled_target(
    layer: Any, world_point: Any, tiles: Any, sources: LayerSources, invert: bool = False
) -> ImageTarget:
    """The shown plane of ``layer`` at full resolution (level 0), read lazily through a
    :class:`PlaneSource`: nothing of the plane is read here."""
    check_layer(layer)
    spatial = level_shapes(layer)[0]
    frame = level_frame(layer, 0)
    index = _slice_index(layer, world_point, frame, spatial)
    limits = layer_limits(layer)
    try:
        source = sources.plane(layer, index, limits)
    except ValueError as exc:
        raise TargetError(f"cannot segment '{layer.name}': {exc}") from exc
    stack_id = partial(sources.stack_id, layer, limits) if index else None
    empty = np.zeros((0, 0, 3), np.uint8)
    return ImageTarget(layer, 0, frame, spatial, index, empty, invert, source, tiles, stack_id)


class LazyPlane:
    """One plane of an nD array (zarr, dask...), read only where a region is asked for."""

    def __init__(self, array: Any, lead: tuple[int, ...]) -> None:
        self.array, self.lead = array, tuple(lead)
        self.shape = tuple(int(n) for n in array.shape[len(lead) :])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> Any:
        return self.array[self.lead + tuple(index)]


class LayerSources:
    """Lazy level-0 planes of image layers, kept so that each plane's contrast sample and
    cache id are computed once (owned by a widget; used from its worker too)."""

    def __init__(self, keep: int = 8) -> None:
        self._planes: OrderedDict[tuple, PlaneSource] = OrderedDict()
        self._stacks: dict[tuple, str] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def plane(self, layer: Any, index: tuple[int, ...], limits: Any) -> PlaneSource:
        """The plane ``index`` of ``layer`` (every pyramid level) as a PlaneSource."""
        key = (id(layer), id(layer.data), tuple(index), limits)
        with self._lock:
            if key in self._planes:
                self._planes.move_to_end(key)
                return self._planes[key]
        levels = layer.data if layer.multiscale else [layer.data]
        shape0 = level_shapes(layer)[0]
        planes = []
        for data, shape in zip(levels, level_shapes(layer), strict=True):
            lead = tuple(int(i * n // m) for i, n, m in zip(index, shape, shape0, strict=False))
            planes.append(data[lead] if isinstance(data, np.ndarray) else LazyPlane(data, lead))
        source = PlaneSource(planes, 2 if layer.rgb else None, contrast_limits=limits)
        with self._lock:
            self._planes[key] = source
            while len(self._planes) > self._keep:
                self._planes.popitem(last=False)
        return source

    def stack_id(self, layer: Any, limits: Any) -> str:
        """A cache id for a whole stack: its shape and the ids of its first, middle and last
        planes (reads those planes' samples: call it in a worker)."""
        key = (id(layer), id(layer.data), limits)
        if key not in self._stacks:
            lead = level_shapes(layer)[0][:-2]
            picks = sorted({tuple(0 for _ in lead), tuple(n // 2 for n in lead),
                            tuple(n - 1 for n in lead)})  # fmt: skip
            ids = [self.plane(layer, p, limits).identity() for p in picks]
            text = "|".join([str(level_shapes(layer)[0]), *ids])
            digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
            self._stacks[key] = f"stack{lead}|{digest}"
        return self._stacks[key]


def layer_limits(layer: Any) -> tuple[float, float] | None:
    """The layer's display range for a lazy plane (None: uint8 at 0..255, or bool)."""
    dtype = np.dtype(layer.dtype)
    if dtype == np.bool_:
        return None
    lo, hi = (float(v) for v in layer.contrast_limits)
    if (dtype == np.uint8 and (lo, hi) == (0.0, 255.0)) or not hi > lo:
        return None
    return lo, hi


def _pad(world_point: Any, n: int) -> np.ndarray:
    p = np.asarray(world_point, float).reshape(-1)
    return np.concatenate([np.zeros(max(0, n - len(p))), p])[-n:]


def contrast_limits(layer: Any, plane: np.ndarray) -> tuple[float, float] | None:
    """The layer's display range, or None when it is the identity for uint8."""
    if plane.dtype == np.bool_:
        return None
    lo, hi = (float(v) for v in layer.contrast_limits)
    if plane.dtype == np.uint8 and (lo, hi) == (0.0, 255.0):
        return None
    if not hi > lo:
        return None
    return lo, hi


__all__ = [
    "MAX_SIDE",
    "ImageTarget",
    "LayerSources",
    "full_plane_shape",
    "layer_limits",
    "resolve_chosen",
    "resolve_tiled_target",
    "TargetError",
    "check_layer",
    "level_frame",
    "level_shapes",
    "pick_level",
    "resolve_target",
]
