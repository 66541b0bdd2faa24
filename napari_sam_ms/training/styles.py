"""The drawn parameters ("style") of one ``wide`` synthetic image, and how they are sampled.

A :class:`Style` is drawn from the image's seed (:func:`draw_style`), so every image of the
``wide`` kind has its own object sizes, density, brightness range, texture, focus, background,
camera and contrast. :class:`StyleOverrides` holds families out (``exclude=("phase",)`` for
training, ``only=("phase",)`` for a held-out test) or fixes single parameters.

Families (what the image looks like; ``Style.family``):

- ``nuclei``: fluorescent nuclei (bright on dark).
- ``cells``: fluorescent cytoplasm with a nucleus inside each cell; the labels are the cells.
- ``brightfield``: absorbing objects, dark on a bright background.
- ``phase``: dark objects on a bright background with bright halo rings.

Lengths are in pixels of a 256-pixel image; ``render_sample``'s ``scale`` multiplies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

FAMILIES = ("nuclei", "cells", "brightfield", "phase")
FAMILY_WEIGHTS = (0.4, 0.25, 0.15, 0.2)
INVERTED = ("brightfield", "phase")
BIT_DEPTHS = (8, 12, 16)
MIN_RADIUS, MAX_RADIUS = 3.0, 40.0  # nucleus radius range (px at scale 1)


@dataclass(frozen=True)
class Style:
    """The parameters one ``wide`` image was drawn with (lengths at scale 1).

    Attributes:
        family: one of :data:`FAMILIES`.
        objects: what is labelled: ``nuclei`` or ``cells``.
        radius: median nucleus radius (px); single nuclei vary around it.
        radius_spread: standard deviation of log radius within the image.
        fill: fraction of the image the objects are meant to cover.
        cluster: chance that an object is placed against an earlier one.
        overlap: chance that a contact overlaps in projection (else the nuclei touch,
            the later one flattened against the earlier).
        brightness_ratio: brightest / dimmest object (log-uniform in between).
        texture: strength of the granular chromatin texture.
        grain: grain size of the texture (px).
        spots: strength of bright chromatin spots.
        nucleoli: chance that a nucleus has dark nucleolus-like holes.
        blur: optical blur of in-focus objects (px).
        defocus: fraction of objects out of focus (blurred and faint).
        defocus_sigma: blur of out-of-focus objects (px).
        background: background level relative to the brightest object.
        gradient: strength of uneven illumination.
        autofluorescence: strength of smooth low-frequency background structure.
        cytoplasm: dim unlabelled cytoplasm-like glow around nuclei.
        photons: detected photons at the brightest object's level.
        read_noise: camera read noise (electrons).
        bit_depth: 8, 12 (stored in uint16) or 16.
        gamma: power applied to the light before the camera.
        contrast: object contrast of the transmitted-light families.
        halo: phase halo strength (0 for the other families).
    """

    family: str
    objects: str
    radius: float
    radius_spread: float
    fill: float
    cluster: float
    overlap: float
    brightness_ratio: float
    texture: float
    grain: float
    spots: float
    nucleoli: float
    blur: float
    defocus: float
    defocus_sigma: float
    background: float
    gradient: float
    autofluorescence: float
    cytoplasm: float
    photons: float
    read_noise: float
    bit_depth: int
    gamma: float
    contrast: float
    halo: float

    @property
    def inverted(self) -> bool:
        """Dark objects on a bright background."""
        return self.family in INVERTED


@dataclass(frozen=True)
class StyleOverrides:
    """Restrictions on drawn styles.

    Attributes:
        only: draw only these families (empty: all).
        exclude: never draw these families.
        fixed: parameter values that replace the drawn ones (e.g. ``{"bit_depth": 8}``).
    """

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def families(self) -> tuple[str, ...]:
        """The families that may be drawn."""
        for name in (*self.only, *self.exclude):
            if name not in FAMILIES:
                raise ValueError(f"unknown style family {name!r}; choose from {FAMILIES}")
        allowed = tuple(
            f for f in FAMILIES if (not self.only or f in self.only) and f not in self.exclude
        )
        if not allowed:
            raise ValueError(f"no style family left (only={self.only}, exclude={self.exclude})")
        return allowed


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_style(rng: np.random.Generator, overrides: StyleOverrides | None = None) -> Style:
    """Draw one style; the same generator state gives the same style."""
    overrides = overrides or StyleOverrides()
    allowed = overrides.families()
    weights = np.array([FAMILY_WEIGHTS[FAMILIES.index(f)] for f in allowed])
    family = allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))]
    cellular = family == "cells" or (family in INVERTED and rng.random() < 0.35)
    objects = "cells" if cellular else "nuclei"
    radius = _log_uniform(rng, 3.5, 32.0)
    dense = rng.random() < 0.4
    defocused = rng.random() < 0.5
    style = Style(
        family=family,
        objects=objects,
        radius=radius,
        radius_spread=float(rng.uniform(0.05, 0.45)),
        fill=_log_uniform(rng, 0.25, 0.6) if dense else _log_uniform(rng, 0.02, 0.25),
        cluster=float(rng.uniform(0.5, 0.95)) if dense else float(rng.uniform(0.0, 0.4)),
        overlap=float(rng.uniform(0.0, 0.5)),
        brightness_ratio=_log_uniform(rng, 1.5, 15.0),
        texture=float(rng.uniform(0.05, 0.45)),
        grain=float(rng.uniform(0.7, 2.5)),
        spots=float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0,
        nucleoli=float(rng.uniform(0.2, 0.9)) if rng.random() < 0.4 else 0.0,
        blur=float(rng.uniform(0.3, 2.0)),
        defocus=float(rng.uniform(0.05, 0.35)) if defocused else 0.0,
        defocus_sigma=float(rng.uniform(2.0, 6.0)),
        background=_log_uniform(rng, 0.005, 0.15),
        gradient=float(rng.uniform(0.0, 0.6)),
        autofluorescence=float(rng.uniform(0.0, 0.1)) if rng.random() < 0.6 else 0.0,
        cytoplasm=float(rng.uniform(0.03, 0.2)) if rng.random() < 0.35 else 0.0,
        photons=_log_uniform(rng, 30.0, 4000.0),
        read_noise=_log_uniform(rng, 0.5, 12.0),
        bit_depth=int(BIT_DEPTHS[int(rng.integers(len(BIT_DEPTHS)))]),
        gamma=_log_uniform(rng, 0.6, 1.7),
        contrast=float(rng.uniform(0.25, 0.8)),
        halo=float(rng.uniform(0.3, 1.0)) if family == "phase" else 0.0,
    )
    if overrides.fixed:
        names = {f.name for f in fields(Style)}
        unknown = set(overrides.fixed) - names
        if unknown:
            raise ValueError(f"unknown style parameters {sorted(unknown)}")
        style = replace(style, **dict(overrides.fixed))
    return style


__all__ = [
    "BIT_DEPTHS",
    "FAMILIES",
    "FAMILY_WEIGHTS",
    "INVERTED",
    "MAX_RADIUS",
    "MIN_RADIUS",
    "Style",
    "StyleOverrides",
    "draw_style",
]
