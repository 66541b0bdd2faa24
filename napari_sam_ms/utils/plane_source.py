"""One image plane read lazily, region by region (numpy, dask, zarr or a pyramid).

:class:`PlaneSource` never loads the whole plane: :meth:`PlaneSource.read` slices only the
region asked for, and the contrast limits that turn it into the model's 8-bit RGB are
estimated once for the whole plane, so all tiles of one plane are normalised alike
(:func:`napari_sam_ms.utils.image.to_rgb_uint8` does the conversion).

Contrast limits, unless given: uint8 and bool planes are used as they are; other types are
scaled from the min..max of a sample of at most ``max_sample`` pixels (default 4 M): the
whole plane when it is that small (then tiles look exactly like the untiled image), else a
strided view of a numpy plane, the finest pyramid level that is small enough, or an 8x8 grid
of windows spread over a chunked (dask/zarr) plane, so only those chunks are read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .image import to_rgb_uint8

Box = tuple[int, int, int, int]
MAX_SAMPLE = 1 << 22  # pixels read to estimate contrast limits (4 M)


class PlaneSource:
    """A 2D plane (optionally with a channel axis) read region by region.

    Args:
        data: a 2D numpy/dask/zarr array (or 2D + channels), or a napari-style multiscale
            list of them (level 0 = full resolution, later levels smaller).
        channel_axis: the channel axis of 3D data (None: the last axis when it has 3 or 4
            entries, as napari's ``rgb``).
        contrast_limits: (low, high) to scale non-uint8 data with (napari's display
            range); None estimates them once from a sample (see the module docstring).
        max_sample: at most this many pixels are read for the estimate.

    Raises:
        ValueError: data of another dimensionality, pyramid levels whose shapes disagree.
    """

    def __init__(
        self,
        data: Any,
        channel_axis: int | None = None,
        contrast_limits: tuple[float, float] | None = None,
        max_sample: int = MAX_SAMPLE,
    ) -> None:
        if isinstance(data, PlaneSource):
            data = data.levels
        levels = list(data) if isinstance(data, (list, tuple)) else [data]
        if not levels:
            raise ValueError("a multiscale image needs at least one level")
        levels = [
            lvl if hasattr(lvl, "shape") and hasattr(lvl, "dtype") else np.asarray(lvl)
            for lvl in levels
        ]
        self.channel_axis = _channel_axis(levels[0], channel_axis)
        self.levels: list[Any] = levels
        self.shape: tuple[int, int] = self._plane_shape(levels[0])
        self.dtype = np.dtype(levels[0].dtype)
        self.downsample: list[tuple[float, float]] = self._check_levels()
        self.max_sample = int(max_sample)
        self._sample: np.ndarray | None = None
        self._limits_given = contrast_limits is not None
        self._limits = None if contrast_limits is None else tuple(map(float, contrast_limits))
        self._identity: str | None = None

    @classmethod
    def of(cls, data: Any, channel_axis: int | None = None) -> PlaneSource:
        """``data`` itself when it is a PlaneSource, else a new one wrapping it."""
        return data if isinstance(data, PlaneSource) else cls(data, channel_axis)

    # ----------------------------------------------------------------- shape
    def _plane_shape(self, arr: Any) -> tuple[int, int]:
        shape = tuple(int(s) for s in arr.shape)
        if self.channel_axis is None:
            if len(shape) != 2:
                raise ValueError(
                    f"expected a 2D plane (H, W) or (H, W, C) with a channel axis, got {shape}: "
                    "for stacks pass one slice"
                )
            return shape  # type: ignore[return-value]
        plane = [s for i, s in enumerate(shape) if i != self.channel_axis]
        return (plane[0], plane[1])

    def _check_levels(self) -> list[tuple[float, float]]:
        """Downsampling factor of every level against level 0; shapes must shrink."""
        factors = []
        for i, lvl in enumerate(self.levels):
            if lvl.ndim != self.levels[0].ndim:
                raise ValueError(
                    f"pyramid level {i} has {lvl.ndim} dimensions, level 0 has "
                    f"{self.levels[0].ndim}: all levels must be the same image"
                )
            h, w = self._plane_shape(lvl)
            fy, fx = self.shape[0] / h, self.shape[1] / w
            prev = factors[-1] if factors else (1.0, 1.0)
            if min(h, w) <= 0 or fy < prev[0] or fx < prev[1] or abs(math.log(fy / fx)) > 0.2:
                raise ValueError(
                    f"pyramid level {i} has plane shape {(h, w)}, which does not follow level 0 "
                    f"{self.shape}: levels must shrink, both axes alike (level 0 = full size)"
                )
            factors.append((fy, fx))
        return factors

    @property
    def ndim(self) -> int:
        return 2

    # ----------------------------------------------------------------- reads
    def read(self, box: Sequence[int], step: int = 1, level: int = 0) -> np.ndarray:
        """The region ``box`` = (y0, x0, y1, x1) of level-0 pixels, as numpy (H, W[, C]).

        Args:
            step: keep every ``step``-th pixel (a strided read of ``level``).
            level: pyramid level to read from; ``box`` is then divided by its factor.
        """
        y0, x0, y1, x1 = _clip_box(box, self.shape)
        arr = self.levels[level]
        if level:
            fy, fx = self.downsample[level]
            h, w = self._plane_shape(arr)
            y0, y1 = min(h - 1, int(y0 / fy)), max(min(h, math.ceil(y1 / fy)), int(y0 / fy) + 1)
            x0, x1 = min(w - 1, int(x0 / fx)), max(min(w, math.ceil(x1 / fx)), int(x0 / fx) + 1)
        index: list[Any] = [slice(y0, y1, step), slice(x0, x1, step)]
        if self.channel_axis is not None:
            index.insert(self.channel_axis, slice(None))
        region = np.asarray(arr[tuple(index)])
        if self.channel_axis is not None and self.channel_axis != region.ndim - 1:
            region = np.moveaxis(region, self.channel_axis, -1)
        return region

    def read_downsampled(self, box: Sequence[int], factor: int) -> np.ndarray:
        """``box`` at about 1/``factor`` resolution: from a pyramid level with that factor
        when there is one, else a strided read of level 0."""
        for i, (fy, fx) in enumerate(self.downsample):
            if i and abs(fy - factor) < 0.02 * factor and abs(fx - factor) < 0.02 * factor:
                return self.read(box, level=i)
        return self.read(box, step=int(factor))

    def model_input(
        self, box: Sequence[int], zoom: int = 1, invert: bool = False, step: int = 1
    ) -> np.ndarray:
        """``box`` as the model's uint8 RGB, (h * zoom, w * zoom, 3), with the plane's limits.

        Args:
            zoom: upsample this many times (bilinear, as SAM's own resize).
            invert: ``255 - rgb`` (dark objects on a bright background).
            step: read every ``step``-th pixel instead (``read_downsampled``).
        """
        region = self.read(box) if step == 1 else self.read_downsampled(box, step)
        return self.to_model(region, zoom=zoom, invert=invert)

    def to_model(self, region: np.ndarray, zoom: int = 1, invert: bool = False) -> np.ndarray:
        """A region read from this plane as uint8 RGB with the plane's contrast limits."""
        rgb = to_rgb_uint8(region, self.contrast_limits)
        if invert:
            rgb = np.subtract(np.uint8(255), rgb)
        if zoom != 1:
            h, w = rgb.shape[:2]
            rgb = np.asarray(Image.fromarray(rgb).resize((w * zoom, h * zoom), Image.BILINEAR))
        return np.ascontiguousarray(rgb)

    # ---------------------------------------------------------- normalisation
    @property
    def contrast_limits(self) -> tuple[float, float] | None:
        """The (low, high) used for every region (None: uint8/bool used as they are)."""
        if self._limits is None and not self._limits_given:
            if self.dtype in (np.uint8, np.bool_):
                return None
            sample = self.sample().astype(np.float64)
            finite = sample[np.isfinite(sample)]
            self._limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            self._limits_given = True
        return self._limits  # type: ignore[return-value]

    def sample(self) -> np.ndarray:
        """The pixels the contrast limits are estimated from (read once)."""
        if self._sample is None:
            self._sample = self._read_sample()
        return self._sample

    def _read_sample(self) -> np.ndarray:
        H, W = self.shape
        if H * W <= self.max_sample:
            return self.read((0, 0, H, W))
        for i in range(1, len(self.levels)):  # a small enough pyramid level
            h, w = self._plane_shape(self.levels[i])
            if h * w <= self.max_sample:
                return self.read((0, 0, H, W), level=i)
        if isinstance(self.levels[0], np.ndarray):
            step = math.ceil(math.sqrt(H * W / self.max_sample))
            return self.read((0, 0, H, W), step=step)
        side = max(1, int(math.sqrt(self.max_sample / 64)))  # 8x8 windows
        ys = np.linspace(0, max(0, H - side), 8).astype(int)
        xs = np.linspace(0, max(0, W - side), 8).astype(int)
        rows = [np.concatenate([self.read((y, x, y + side, x + side)) for x in xs], 1) for y in ys]
        return np.concatenate(rows, 0)

    def identity(self) -> str:
        """A cheap content id: shape, dtype, contrast limits and a hash of the sample."""
        if self._identity is None:
            sample = np.ascontiguousarray(self.sample())
            digest = hashlib.blake2b(memoryview(sample).cast("B"), digest_size=16).hexdigest()
            self._identity = (
                f"{self.shape[0]}x{self.shape[1]}|{self.dtype.str}|c{self.channel_axis}|"
                f"{self.contrast_limits}|{digest}"
            )
        return self._identity

    def __repr__(self) -> str:
        return f"PlaneSource(shape={self.shape}, dtype={self.dtype}, levels={len(self.levels)})"


def _channel_axis(arr: Any, channel_axis: int | None) -> int | None:
    ndim = len(arr.shape)
    if channel_axis is None:
        if ndim == 3 and arr.shape[-1] in (3, 4):
            return 2
        return None
    if ndim != 3:
        raise ValueError(f"channel_axis={channel_axis} needs 3D data, got shape {arr.shape}")
    return int(channel_axis) % 3


def _clip_box(box: Sequence[int], shape: tuple[int, int]) -> Box:
    y0, x0, y1, x1 = (int(v) for v in box)
    H, W = shape
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"region {tuple(box)} is not a non-empty box inside the plane {shape}")
    return (y0, x0, y1, x1)


__all__ = ["MAX_SAMPLE", "PlaneSource"]
