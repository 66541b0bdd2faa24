"""Whole-image settings: one table of name, Meta's default, stage, type, range and help.

The generator's signature, the pipeline, the command line, the widget and re-filtering all
read :data:`SETTINGS`. A setting's stage says what changing it costs: ``"run"`` settings
change what the model is asked (a new run), ``"filter"`` settings only re-filter the cached
candidates of the last run (:mod:`napari_sam_ms.amg_refine`). Per-model values come from the
weights registry (:func:`model_defaults`).
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .utils.amg import build_all_layer_point_grids
from .utils.tiling import ZOOMS, TileGrid, default_halo
from .weights.registry import mirror_average_default, whole_image_settings

STAGES = ("run", "filter")


class ArgumentContainer(Protocol):
    """An argparse parser or argument group."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Setting:
    """One whole-image setting.

    Args:
        name: the generator's keyword argument.
        default: Meta's default (ours for settings Meta's generator does not have).
        stage: ``"run"`` (needs the model again) or ``"filter"`` (re-filters candidates).
        kind: ``int``, ``float``, ``bool``, ``str`` or ``object`` (no command-line option or
            widget control).
        help: one or two sentences for ``--help``, tooltips and docstrings.
        minimum, maximum, step: the widget control's range and step (None: not shown).
        ours: not in Meta's generator (its default keeps Meta's behaviour).
    """

    name: str
    default: Any
    stage: str
    kind: type
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    ours: bool = False

    @property
    def exposed(self) -> bool:
        """Offered on the command line and in the widget."""
        return self.minimum is not None or self.kind is bool


def _table(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


SETTINGS: dict[str, Setting] = _table(
    Setting(
        "points_per_side", 32, "run", int,
        "SAM is prompted with an N x N grid of points. More points find smaller objects; the "
        "time grows with N squared.",
        1, 256, 1,
    ),
    Setting(
        "points_per_batch", 64, "run", int,
        "Grid points decoded at once. Changes speed and memory only, not the result.",
        1, 4096, 1,
    ),
    Setting(
        "pred_iou_thresh", 0.88, "filter", float,
        "Keep masks whose predicted quality (the IoU the model expects with the true object) "
        "is above this; 0 keeps all. Meta's value was chosen on photos: on microscopy 0.6-0.75 "
        "often finds many more objects.",
        0.0, 1.0, 0.01,
    ),
    Setting(
        "stability_score_thresh", 0.95, "filter", float,
        "Keep masks that hardly change when the mask cut-off moves by the stability offset "
        "(IoU of the two masks); 0 keeps all. Try 0.7-0.85 for faint or blurry objects.",
        0.0, 1.0, 0.01,
    ),
    Setting(
        "stability_score_offset", 1.0, "run", float,
        "How far the mask cut-off is moved (in logits) to measure stability.",
        0.0, 10.0, 0.1,
    ),
    Setting(
        "box_nms_thresh", 0.7, "filter", float,
        "Duplicate removal: of two masks whose boxes overlap by more than this IoU, the one "
        "with the lower predicted IoU is dropped. Lower gives fewer, more distinct objects.",
        0.0, 1.0, 0.01,
    ),
    Setting(
        "crop_n_layers", 0, "run", int,
        "Also segment zoomed-in crops: 1 adds 2x2 crops, 2 adds 4x4 more (finds small objects "
        "in large images, much slower); 0 segments the whole image only.",
        0, 4, 1,
    ),
    Setting(
        "crop_nms_thresh", 0.7, "filter", float,
        "Duplicate removal between crops (box IoU), preferring masks from smaller crops. Only "
        "used with crop layers, and between tiles (box or mask IoU).",
        0.0, 1.0, 0.01,
    ),
    Setting(
        "crop_overlap_ratio", 512 / 1500, "run", float,
        "Overlap of neighbouring crops, as a fraction of the image's short side.",
        0.0, 0.95, 0.0001,
    ),
    Setting(
        "crop_n_points_downscale_factor", 1, "run", int,
        "Crop layer i uses points_per_side / factor**i points per side.",
        1, 8, 1,
    ),
    Setting(
        "point_grids", None, "run", object,
        "Explicit (N, 2) grids of (x, y) in [0, 1], one per crop layer, instead of "
        "points_per_side.",
    ),
    Setting(
        "min_mask_region_area", 0, "filter", int,
        "Fill holes and remove islands smaller than this many pixels in each mask, then remove "
        "duplicates again; 0 = off.",
        0, 1_000_000, 10,
    ),
    Setting(
        "output_mode", "binary_mask", "filter", str,
        "Form of each record's segmentation: binary_mask (H x W bool), uncompressed_rle or "
        "coco_rle (needs pycocotools).",
    ),
    Setting(
        "mask_overlap_thresh", 1.0, "filter", float,
        "Overlap removal: masks are taken best first (predicted IoU x stability) and one is "
        "dropped when more than this fraction of it lies under masks already taken, which keeps "
        "touching objects apart; 1 = off.",
        0.0, 1.0, 0.01, True,
    ),
    Setting(
        "mirror_average", False, "run", bool,
        "Average every grid point's masks over the image and its three mirror images (flipped "
        "left-right, up-down, both): cleaner masks, about four times the time.",
        ours=True,
    ),
    Setting(
        "invert", False, "run", bool,
        "Show the model the inverted image (255 - value, after conversion to 8-bit RGB): for "
        "dark objects on a bright background (bright-field, H&E), which SAM often misses. The "
        "image itself and the masks' pixels are unchanged.",
        ours=True,
    ),
    Setting(
        "tile_shape", None, "run", object,
        "Segment the plane tile by tile at its own resolution: (h, w) inner size of a tile "
        "(an int for square tiles), e.g. the model's input minus twice the halo; None: the "
        "whole image is shrunk to the model's input (Meta's behaviour). Masks cut by a tile "
        "edge are dropped and duplicates across tiles removed, so objects on tile borders "
        "appear once and whole.",
        ours=True,
    ),
    Setting(
        "halo", None, "run", object,
        "Margin (h, w) (or an int) around each tile that the model also sees, less than half "
        "a tile; objects up to about this size on a tile border are segmented whole. None: "
        "1/8 of the model's input (divided by the zoom). Only with tile_shape.",
        ours=True,
    ),
    Setting(
        "zoom", 1, "run", int,
        "Upsample every tile 1, 2 or 4 times before the model sees it, for small objects "
        "(tiles are then that much smaller). Only with tile_shape.",
        ours=True,
    ),
)  # fmt: skip

META_DEFAULTS: dict[str, Any] = {name: s.default for name, s in SETTINGS.items()}


def names(stage: str | None = None, *, exposed: bool = False) -> list[str]:
    """Setting names in table order.

    Args:
        stage: only this stage (``"run"`` or ``"filter"``); None: all.
        exposed: only those offered on the command line and in the widget.
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    return [
        n
        for n, s in SETTINGS.items()
        if (stage is None or s.stage == stage) and (s.exposed or not exposed)
    ]


def help_text(name: str) -> str:
    """The help text of one setting, saying so when Meta's generator does not have it."""
    s = SETTINGS[name]
    return f"{s.help} Not in Meta's SAM." if s.ours else s.help


def check_names(settings: Iterable[str]) -> None:
    """Raise a TypeError naming unknown settings and listing the valid ones."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(
            f"unknown whole-image parameter(s) {', '.join(unknown)}; valid ones are "
            f"{', '.join(SETTINGS)}"
        )


def split(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split settings into (run, filter) dicts, keeping only the names given."""
    check_names(settings)
    run = {k: v for k, v in settings.items() if SETTINGS[k].stage == "run"}
    flt = {k: v for k, v in settings.items() if SETTINGS[k].stage == "filter"}
    return run, flt


def model_overrides(model_type: str) -> dict[str, Any]:
    """The registry's settings for a model's own weights (its ``whole_image`` values and
    ``mirror_average``); empty for Meta's models and unknown names."""
    registered = whole_image_settings(model_type)
    check_names(registered)
    own: dict[str, Any] = {k: SETTINGS[k].kind(v) for k, v in registered.items()}
    if mirror_average_default(model_type):
        own["mirror_average"] = True
    return own


def model_defaults(model_type: str) -> dict[str, Any]:
    """Every setting: Meta's defaults overridden by the model's registry values.

    Args:
        model_type: ``micro``, ``vit_b``, ``sam_vit_b``... (unknown names: Meta's defaults).

    Returns:
        ``{name: value}`` for every name in :data:`SETTINGS`.
    """
    return {**META_DEFAULTS, **model_overrides(model_type)}


def format_value(value: Any) -> str:
    """A value as shown in help text (512/1500 as 0.3413, True as on)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def default_text(name: str, model_type: str | None = None) -> str:
    """A setting's default as help text shows it: ``0.88; 0.3 for the micro model``.

    Args:
        name: the setting.
        model_type: a model whose own value is named too, when it differs from Meta's.
    """
    default = SETTINGS[name].default
    own = model_overrides(model_type) if model_type else {}
    text = format_value(default)
    if name in own and own[name] != default:
        text += f"; {format_value(own[name])} for the {model_type} model"
    return text


def add_cli_options(
    group: ArgumentContainer,
    hidden: ArgumentContainer | None = None,
    model_type: str | None = None,
) -> None:
    """Add ``--points-per-side N``... for every exposed setting, each defaulting to None.

    Args:
        group: where the listed options go.
        hidden: where the Python spelling (``--points_per_side``) goes, unlisted; None: not
            added.
        model_type: a model whose registry values are named in the help text too.
    """
    for name in names(exposed=True):
        s = SETTINGS[name]
        text = f"{help_text(name)} (default: {default_text(name, model_type)})"
        flag = f"--{name.replace('_', '-')}"
        if s.kind is bool:
            action = argparse.BooleanOptionalAction
            group.add_argument(flag, dest=name, action=action, default=None, help=text)
            continue
        metavar = "N" if s.kind is int else "X"
        group.add_argument(flag, dest=name, type=s.kind, default=None, metavar=metavar, help=text)
        if hidden is not None:
            hidden.add_argument(
                f"--{name}",
                dest=name,
                type=s.kind,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def from_cli(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every exposed setting: as given on the command line, else from ``defaults``
    (e.g. :func:`model_defaults`), else Meta's."""
    params = {}
    for name in names(exposed=True):
        given = getattr(args, name, None)
        kind = SETTINGS[name].kind
        params[name] = kind(given if given is not None else defaults.get(name, META_DEFAULTS[name]))
    return params


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, or a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(
    value: Any, name: str, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float in [minimum, maximum], or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value:g}")
    return value


def check_point_grids(point_grids: Sequence[np.ndarray], crop_n_layers: int) -> list[np.ndarray]:
    """Copies of the grids as float (N, 2) arrays in [0, 1], one per crop layer at least."""
    if isinstance(point_grids, np.ndarray) and point_grids.ndim == 2:
        raise TypeError("point_grids is a list of (N, 2) grids, one per crop layer: wrap it [grid]")
    grids = [np.array(g, dtype=np.float64, copy=True) for g in point_grids]
    if len(grids) < crop_n_layers + 1:
        raise ValueError(
            f"point_grids has {len(grids)} grid(s) but crop_n_layers={crop_n_layers} needs "
            f"{crop_n_layers + 1} (one per layer, layer 0 being the whole image)"
        )
    for i, g in enumerate(grids):
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise ValueError(f"point_grids[{i}] must be a non-empty (N, 2) array, got {g.shape}")
        if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
            raise ValueError(f"point_grids[{i}] must hold (x, y) normalised to [0, 1]")
    return grids


def check_tiling(
    tile_shape: Any, halo: Any, zoom: Any, crop_n_layers: int, model_input: int
) -> tuple[tuple[int, int] | None, tuple[int, int] | None, int]:
    """Checked ``tile_shape``, ``halo`` (default: 1/8 of the zoomed model input) and
    ``zoom``; (None, None, 1) when tiling is off."""
    zoom = check_int(zoom, "zoom", minimum=1)
    if zoom not in ZOOMS:
        raise ValueError(f"zoom must be one of {ZOOMS}, got {zoom}")
    if tile_shape is None:
        if halo is not None or zoom != 1:
            raise ValueError("halo and zoom need tile_shape (tiling is off without it)")
        return None, None, 1
    if crop_n_layers:
        raise ValueError(
            "crop_n_layers must be 0 with tile_shape: tiles replace crop layers (use zoom "
            "for small objects)"
        )
    if halo is None:
        halo = default_halo(model_input, zoom)
    grid = TileGrid((1, 1), tile_shape, halo)  # checks sizes and the halo
    return grid.tile_shape, grid.halo, zoom


def point_grids_for(
    points_per_side: int | None,
    point_grids: Sequence[np.ndarray] | None,
    crop_n_layers: int,
    factor: int,
) -> list[np.ndarray]:
    """The point grid of every crop layer, from exactly one of the two arguments."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError(
            "give exactly one of points_per_side (a number) or point_grids (explicit grids); "
            f"got points_per_side={points_per_side!r} and "
            f"point_grids={'None' if point_grids is None else 'given'}"
        )
    if point_grids is not None:
        return check_point_grids(point_grids, crop_n_layers)
    n = check_int(points_per_side, "points_per_side", minimum=1)
    if int(n / factor**crop_n_layers) < 1:
        raise ValueError(
            f"points_per_side={n} divided by crop_n_points_downscale_factor**crop_n_layers"
            f" = {factor}**{crop_n_layers} leaves no points in the last crop layer"
        )
    return build_all_layer_point_grids(n, crop_n_layers, factor)


__all__ = [
    "META_DEFAULTS",
    "ArgumentContainer",
    "SETTINGS",
    "STAGES",
    "Setting",
    "add_cli_options",
    "check_float",
    "check_int",
    "check_names",
    "check_point_grids",
    "check_tiling",
    "default_text",
    "format_value",
    "from_cli",
    "help_text",
    "model_defaults",
    "model_overrides",
    "names",
    "point_grids_for",
    "split",
]
