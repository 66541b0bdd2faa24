"""The ``wide`` kind of synthetic microscopy: every image drawn from its own :class:`Style`.

One seed gives one style (:func:`~napari_sam_ms.training.styles.draw_style`, its own random
stream) and one scene (another stream), so fixing a style parameter keeps the scene's draws:

- **Objects**: nuclei of radius 3-40 px (per image a log-normal size distribution around a
  log-uniform median), sparse fields to dense clusters whose nuclei touch (the later one
  flattened against the earlier) or overlap in projection (intensities add, the later one
  occludes the earlier in the labels); or touching cells (the ``cells`` renderer of
  :mod:`~napari_sam_ms.training.synthetic`) with a dark or bright nucleus inside.
- **Intensities**: brightness log-uniform over up to 15x within an image, soft rims, granular
  texture, bright chromatin spots, dark nucleolus-like holes; some objects out of focus
  (blurred more and fainter).
- **Optics and camera**: blur, out-of-focus haze, uneven illumination, smooth
  autofluorescence, dim cytoplasm-like glow, or dark-on-bright transmitted light (absorbing,
  or phase-like with bright halo rings); random gamma; Poisson photon noise, Gaussian read
  noise, random offset and gain; 8-, 12- (in uint16) or 16-bit.

Labels are exact: every id is one 4-connected object, background 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage import draw, filters, transform

from .styles import INVERTED, MAX_RADIUS, MIN_RADIUS, Style, StyleOverrides, draw_style
from .synthetic_parts import MAX_HIDDEN, SyntheticSample, _cell_labels, _cell_signal

KIND_STREAM = 2  # mixed into the seed: nuclei 0, cells 1, wide 2
MAX_OBJECTS = 400  # per image, whatever the size


@dataclass
class _Nucleus:
    """A placed nucleus: its drawn mask in its box, and its geometry."""

    sl: tuple[slice, slice]
    mask: np.ndarray
    cy: float
    cx: float
    r: float


def render_wide(
    seed: int,
    shape: tuple[int, int] = (256, 256),
    bit_depth: int | None = None,
    invert: bool = False,
    scale: float | None = None,
    styles: StyleOverrides | None = None,
) -> SyntheticSample:
    """One ``wide`` sample (same arguments, same output).

    Args:
        seed: non-negative integer.
        shape: (H, W), each at least 32.
        bit_depth: None (drawn), or 8, 12 or 16 to fix it.
        invert: draw only the dark-on-bright families.
        scale: length factor (default ``min(shape) / 256``).
        styles: families held out or kept, fixed parameters.
    """
    overrides = styles or StyleOverrides()
    if invert:
        kept = tuple(f for f in (overrides.only or INVERTED) if f in INVERTED)
        overrides = replace(overrides, only=kept or INVERTED)
    if bit_depth is not None:
        if bit_depth not in (8, 12, 16):
            raise ValueError(f"bit_depth must be 8, 12 or 16, got {bit_depth}")
        overrides = replace(overrides, fixed={**overrides.fixed, "bit_depth": int(bit_depth)})
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 32:
        raise ValueError(f"shape must be at least 32 x 32, got {shape}")
    style = draw_style(np.random.default_rng([int(seed), KIND_STREAM, 0]), overrides)
    rng = np.random.default_rng([int(seed), KIND_STREAM, 1])
    s = min(shape) / 256.0 if scale is None else float(scale)
    if style.objects == "nuclei":
        nuclei = _place_nuclei(rng, shape, style, s)
        labels = np.zeros(shape, np.int32)
        masks = np.zeros((len(nuclei),) + shape, bool)
        for k, nuc in enumerate(nuclei, start=1):
            labels[nuc.sl][nuc.mask] = k
            masks[k - 1][nuc.sl] = nuc.mask
        planes = _nuclei_planes(rng, nuclei, shape, style, s)
    else:
        labels, planes = _cells(rng, shape, style, s)
        masks = np.zeros((int(labels.max()),) + shape, bool)
        for k, sl in enumerate(ndi.find_objects(labels)):
            masks[k][sl] = labels[sl] == k + 1
    image = _acquire(rng, planes, labels > 0, style, s)
    return SyntheticSample(image, labels.astype(np.uint16), masks, "wide", int(seed), style)


# ---------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------


def _star_polygon(
    rng: np.random.Generator, a: float, b: float, blobby: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) offsets of a rotated ellipse with a random low-frequency wobble (the
    shapes of the ``nuclei`` kind, drawn in fewer calls; 16-48 vertices by size)."""
    n = int(np.clip(2 * (a + b), 16, 48))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 6)[:, None]
    amp, phase = rng.normal(0, 0.12 / k), rng.uniform(0, 2 * np.pi, (4, 1))
    r = np.clip(1 + blobby * (amp * np.cos(k * t + phase)).sum(0), 0.6, 1.5)
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    c, s = np.cos(phi := rng.uniform(0, np.pi)), np.sin(phi)
    return x * s + y * c, x * c - y * s


def _local_polygon(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The polygon's mask inside its bounding box (clipped to the image), or None."""
    r0, c0 = max(int(np.floor(rows.min())), 0), max(int(np.floor(cols.min())), 0)
    r1, c1 = (
        min(int(np.ceil(rows.max())) + 1, shape[0]),
        min(int(np.ceil(cols.max())) + 1, shape[1]),
    )
    if r1 - r0 < 2 or c1 - c0 < 2:
        return None
    canvas = Image.new("1", (c1 - c0, r1 - r0))  # PIL: (x, y) = (col, row)
    ImageDraw.Draw(canvas).polygon(list(zip(cols - c0, rows - r0, strict=True)), fill=1)
    mask = np.asarray(canvas, dtype=bool)
    return (slice(r0, r1), slice(c0, c1)), mask


def _one_piece(mask: np.ndarray) -> bool:
    return ndi.label(mask)[1] == 1


def _union(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )  # type: ignore[return-value]


def _place_nuclei(
    rng: np.random.Generator, shape: tuple[int, int], style: Style, s: float
) -> list[_Nucleus]:
    """Nuclei in drawing order; ``mask`` is each one's final drawn shape."""
    h, w = shape
    radius = style.radius * s
    mean_area = np.pi * radius**2 * np.exp(2 * style.radius_spread**2)
    target = int(np.clip(style.fill * h * w / mean_area, 1, MAX_OBJECTS))
    blobby = rng.uniform(0.0, 2.0)
    owner = np.zeros(shape, np.int32)
    placed: list[_Nucleus] = []
    drawn: list[int] = []  # drawn areas
    visible: list[int] = []  # areas still visible
    for _ in range(6 * target):
        if len(placed) >= target:
            break
        r = radius * float(np.exp(rng.normal(0, style.radius_spread)))
        r = float(np.clip(r, MIN_RADIUS * s, MAX_RADIUS * s))
        e = np.sqrt(rng.uniform(1.0, 1.6))
        if placed and rng.random() < style.cluster:
            other = placed[int(rng.integers(len(placed)))]
            ang, d = rng.uniform(0, 2 * np.pi), (other.r + r) * rng.uniform(0.75, 1.05)
            cy, cx = other.cy + d * np.sin(ang), other.cx + d * np.cos(ang)
        else:
            cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        rows, cols = _star_polygon(rng, r * e, r / e, blobby)
        local = _local_polygon(rows + cy, cols + cx, shape)
        if local is None:
            continue
        sl, mask = local
        area = int(mask.sum())
        if area < max(8.0, 0.3 * np.pi * r * r) or not _one_piece(mask):
            continue
        sub = owner[sl]
        under = sub[mask]
        hit = np.unique(under[under > 0])
        if hit.size and rng.random() < style.overlap:  # in projection: the new one occludes
            lost = {int(k): int(np.count_nonzero(sub[mask] == k)) for k in hit}
            if not all(
                visible[k - 1] - n >= (1 - MAX_HIDDEN) * drawn[k - 1] for k, n in lost.items()
            ):
                continue
            if not all(_still_one_piece(owner, placed[k - 1].sl, sl, mask, k) for k in lost):
                continue
            for k, n in lost.items():
                visible[k - 1] -= n
        elif hit.size:  # touching: the new one yields to the earlier ones
            mask = mask & (sub == 0)
            if mask.sum() < (1 - MAX_HIDDEN) * area or not _one_piece(mask):
                continue
            area = int(mask.sum())
        sub[mask] = len(placed) + 1
        placed.append(_Nucleus(sl, mask, cy, cx, r))
        drawn.append(area)
        visible.append(area)
    return placed


def _still_one_piece(
    owner: np.ndarray, own: tuple[slice, slice], new: tuple[slice, slice], mask: np.ndarray, k: int
) -> bool:
    """Does object ``k`` stay one piece when ``mask`` (in box ``new``) is drawn over it?"""
    box = _union(own, new)
    keep = owner[box] == k
    r, c = new[0].start - box[0].start, new[1].start - box[1].start
    keep[r : r + mask.shape[0], c : c + mask.shape[1]] &= ~mask
    return _one_piece(keep)


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], style: Style, s: float
) -> np.ndarray:
    """Multiplicative chromatin texture: granular noise and bright spots."""
    grain = filters.gaussian(rng.standard_normal(shape), sigma=style.grain * s)
    tex = np.clip(1 + style.texture * grain / (grain.std() + 1e-9), 0.2, None)
    if style.spots > 0:
        points = (rng.random(shape) < 0.01).astype(np.float64)
        spots = filters.gaussian(points, sigma=max(0.6, 0.7 * style.grain * s))
        tex *= 1 + 2 * style.spots * spots / (spots.max() + 1e-9)
    return tex


def _brightness(rng: np.random.Generator, style: Style, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-object brightness (log-uniform over the style's ratio) and out-of-focus flags."""
    level = style.brightness_ratio ** (-rng.random(n))
    if n > 1:  # the full range occurs in the image
        ends = rng.choice(n, 2, replace=False)
        level[ends] = (1.0, 1.0 / style.brightness_ratio)
    out = rng.random(n) < style.defocus
    level = np.where(out, level * rng.uniform(0.35, 0.8, n), level)
    return level, out


def _nuclei_planes(
    rng: np.random.Generator, nuclei: list[_Nucleus], shape: tuple[int, int], style: Style, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(in focus, out of focus) signal of the nuclei; overlaps add."""
    planes = (np.zeros(shape), np.zeros(shape))
    level, out = _brightness(rng, style, len(nuclei))
    holes = np.ones(shape)
    for nuc, b, o in zip(nuclei, level, out, strict=True):
        depth = ndi.distance_transform_edt(np.pad(nuc.mask, 1))[1:-1, 1:-1]
        edge = nuc.r * rng.uniform(0.08, 0.3)
        planes[int(o)][nuc.sl] += b * (1 - np.exp(-(depth + 0.5) / edge)) * nuc.mask
        if nuc.r >= 5 * s and rng.random() < style.nucleoli:
            _nucleoli(rng, holes[nuc.sl], depth, nuc.r)
    tex = _texture(rng, shape, style, s) * holes
    return planes[0] * tex, planes[1] * tex


def _nucleoli(rng: np.random.Generator, holes: np.ndarray, depth: np.ndarray, r: float) -> None:
    """Darken 1-3 small discs deep inside a nucleus (in place)."""
    for _ in range(int(rng.integers(1, 4))):
        size = r * rng.uniform(0.12, 0.25)
        rows, cols = np.nonzero(depth > size + 1)
        if rows.size == 0:
            return
        i = int(rng.integers(rows.size))
        rr, cc = draw.disk((rows[i], cols[i]), size, shape=holes.shape)
        holes[rr, cc] *= rng.uniform(0.3, 0.7)


def _cells(
    rng: np.random.Generator, shape: tuple[int, int], style: Style, s: float
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Touching cells (labels) and their signal planes, a nucleus inside each cell."""
    cell_scale = float(np.clip(2.2 * style.radius / 22.0, 0.35, 1.6)) * s
    labels = _cell_labels(rng, shape, cell_scale)
    signal = _cell_signal(rng, labels, cell_scale)
    n = int(labels.max())
    level, out = _brightness(rng, style, n)
    signal = signal * np.concatenate([[0.0], level])[labels]
    nucleus_level = rng.uniform(1.3, 3.0) if rng.random() < 0.6 else rng.uniform(0.2, 0.6)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        cell = labels[sl] == k
        depth = ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1]
        if depth.max() < 3:
            continue
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        r = min(0.6 * depth.max(), style.radius * s * float(np.exp(rng.normal(0, 0.15))))
        rr, cc = draw.ellipse(
            row, col, r, r * rng.uniform(0.7, 1.0), cell.shape, rng.uniform(0, np.pi)
        )
        inside = cell[rr, cc]
        sub = signal[sl]
        sub[rr[inside], cc[inside]] = level[k - 1] * nucleus_level * (0.8 + 0.2 * rng.random())
    signal = signal * _texture(rng, shape, replace(style, spots=0.0), s)
    defocused = np.concatenate([[False], out])[labels]
    return labels, (np.where(defocused, 0.0, signal), np.where(defocused, signal, 0.0))


# ---------------------------------------------------------------------------------------
# Optics and camera
# ---------------------------------------------------------------------------------------


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a 4x smaller grid."""
    if sigma < 8:
        return filters.gaussian(image, sigma=sigma)
    small = transform.downscale_local_mean(image, (4, 4))
    small = filters.gaussian(small, sigma=sigma / 4)
    return transform.resize(small, image.shape, order=1)[: image.shape[0], : image.shape[1]]


def _field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1] varying over ``cells`` cells across the image."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    small = transform.resize(coarse, (min(shape[0], 64), min(shape[1], 64)), order=3)
    return np.clip(transform.resize(small, shape, order=1) / 1.5, -1.5, 1.5)


def _acquire(
    rng: np.random.Generator,
    planes: tuple[np.ndarray, np.ndarray],
    foreground: np.ndarray,
    style: Style,
    s: float,
) -> np.ndarray:
    """Blur, background, contrast, gamma, noise and digitisation of the signal planes."""
    shape = foreground.shape
    obj = filters.gaussian(planes[0], sigma=style.blur * s)
    if planes[1].any():
        obj = obj + filters.gaussian(planes[1], sigma=style.defocus_sigma * s)
    obj = obj / max(float(obj.max()), 1e-9)
    light_field = 1 + style.gradient * 0.5 * _field(rng, shape, 2)
    if style.inverted:
        ring = filters.gaussian(foreground.astype(np.float64), sigma=rng.uniform(1.0, 3.0) * s)
        ring = ring - foreground  # > 0 just outside the objects, < 0 just inside
        if style.family == "phase":  # bright halo outside, dark rim inside
            light = (
                1
                - style.contrast * obj
                + style.halo * (2 * ring.clip(0) + 0.5 * ring.clip(None, 0))
            )
        else:
            light = np.exp(-1.5 * style.contrast * obj) + 0.1 * style.contrast * ring
        light = light * light_field + 0.1 * style.autofluorescence * _field(rng, shape, 6)
    else:
        haze = _smooth(obj, rng.uniform(6, 20) * s) * rng.uniform(0.0, 0.3)
        glow = np.zeros(shape)
        if style.cytoplasm > 0:
            reach = style.radius * s * rng.uniform(0.8, 2.5)
            near = ndi.distance_transform_edt(~foreground) < reach
            glow = _smooth((near & ~foreground).astype(np.float64), style.radius * s * 0.3)
            glow *= style.cytoplasm * (1 + 0.3 * _field(rng, shape, 12))
        auto = style.autofluorescence * (1 + _field(rng, shape, int(rng.integers(3, 10))))
        light = (obj + haze + glow) * light_field + style.background + auto
    light = np.clip(light, 0, None) ** style.gamma
    counts = rng.poisson(light * style.photons).astype(np.float64)
    counts += rng.normal(0, style.read_noise, shape)
    return _digitise(rng, counts, style.bit_depth)


def _digitise(rng: np.random.Generator, counts: np.ndarray, bit_depth: int) -> np.ndarray:
    """Camera offset and gain: the bright end lands at a random part of the range."""
    top = float(np.percentile(counts, 99.9)) + 1e-9
    full = (1 << bit_depth) - 1
    if bit_depth == 8:
        offset, fraction = rng.uniform(0, 15), rng.uniform(0.5, 1.1)
    elif bit_depth == 12:
        offset, fraction = rng.uniform(50, 300), rng.uniform(0.2, 0.95)
    else:
        offset, fraction = rng.uniform(100, 2000), rng.uniform(0.03, 0.9)
    adu = offset + counts * fraction * (full - offset) / top
    return np.clip(adu, 0, full).astype(np.uint8 if bit_depth == 8 else np.uint16)


__all__ = ["KIND_STREAM", "MAX_OBJECTS", "render_wide"]
