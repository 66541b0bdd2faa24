"""What to change when whole-image segmentation keeps no object (numpy only).

The advice is computed from the current settings and the cached candidates' own scores
(:class:`~napari_sam_ms.amg_refine.Candidates`, collected with the per-mask filters open), so
it names the filter that removed everything and the value that lets the best candidate through:
``0 objects from 3072 candidates: lower 'pred iou thresh' from 0.30 to 0.21 (best predicted
IoU 0.22).``
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .amg_refine import Candidates, iou_keep, stability_keep, with_filter_defaults
from .amg_tiles import cut_keep

STEP = 0.01  # the widget's slider step: suggested thresholds are multiples of it


def label(name: str) -> str:
    """A setting as the widget labels it: ``'pred iou thresh'``."""
    return "'" + name.replace("_", " ") + "'"


def iou_setting_for(best: float) -> float:
    """The largest multiple of :data:`STEP` that ``pred_iou_thresh`` may be for a predicted
    IoU of ``best`` to pass (it must be strictly above the threshold); 0 turns it off."""
    return _largest_step(lambda v: np.float32(best) > np.float32(v), best)


def stability_setting_for(best: float) -> float:
    """The largest multiple of :data:`STEP` that ``stability_score_thresh`` may be for a
    stability score of ``best`` to pass (at least the threshold)."""
    return _largest_step(lambda v: np.float32(best) >= np.float32(v), best)


def _largest_step(passes: Callable[[float], bool], best: float) -> float:
    """The largest multiple of :data:`STEP` (at least 0) that ``passes``, compared as the
    filters do (float32)."""
    k = max(math.floor(best / STEP) + 1, 0)
    while k > 0 and not passes(round(k * STEP, 2)):
        k -= 1
    return round(k * STEP, 2)


def _scores(candidates: Candidates) -> tuple[np.ndarray, np.ndarray]:
    if not candidates.crops:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    ious = np.concatenate([np.asarray(c["iou_preds"], np.float32) for c in candidates.crops])
    stab = np.concatenate([np.asarray(c["stability_score"], np.float32) for c in candidates.crops])
    return ious, np.nan_to_num(stab, nan=0.0)


def score_advice(candidates: Candidates, iou_thresh: float, stab_thresh: float) -> list[str]:
    """Ways to let at least one candidate through the predicted-IoU and stability filters.

    Empty when some candidate already passes both. Otherwise one item per filter that,
    lowered alone, lets the best candidate passing the other one through; when neither
    alone helps, one item lowering both to the values of the best candidate (by predicted
    IoU x stability).
    """
    ious, stab = _scores(candidates)
    iou_ok, stab_ok = iou_keep(ious, iou_thresh), stability_keep(stab, stab_thresh)
    if len(ious) == 0 or (iou_ok & stab_ok).any():
        return []
    advice = []
    if stab_ok.any():
        best = float(ious[stab_ok].max())
        scope = _among(stab_ok, "stability_score_thresh")
        advice.append(
            f"lower {label('pred_iou_thresh')} from {iou_thresh:.2f} to "
            f"{iou_setting_for(best):.2f} (best predicted IoU {best:.2f}{scope})"
        )
    if iou_ok.any():
        best = float(stab[iou_ok].max())
        scope = _among(iou_ok, "pred_iou_thresh")
        advice.append(
            f"lower {label('stability_score_thresh')} from {stab_thresh:.2f} to "
            f"{stability_setting_for(best):.2f} (best stability score {best:.2f}{scope})"
        )
    if not advice:
        i = int(np.argmax(ious.astype(np.float64) * stab))
        advice.append(
            f"lower {label('pred_iou_thresh')} from {iou_thresh:.2f} to "
            f"{iou_setting_for(float(ious[i])):.2f} and {label('stability_score_thresh')} from "
            f"{stab_thresh:.2f} to {stability_setting_for(float(stab[i])):.2f} (the best "
            f"candidate: predicted IoU {ious[i]:.2f}, stability score {stab[i]:.2f})"
        )
    return advice


def _cut_advice(candidates: Candidates, settings: Mapping[str, Any]) -> list[str]:
    """Advice when every candidate passing the score filters touches a tile edge (a tiled
    run drops those as cut); empty when some candidate does not."""
    tiles = candidates.tiles
    passing = cut = 0
    for crop in candidates.crops:
        ok = iou_keep(np.asarray(crop["iou_preds"], np.float32), settings["pred_iou_thresh"])
        ok &= stability_keep(
            np.asarray(crop["stability_score"], np.float32), settings["stability_score_thresh"]
        )
        passing += int(ok.sum())
        cut += int((~cut_keep(crop["boxes"][ok], crop["tile_ids"][ok], tiles)).sum())
    if passing == 0 or cut < passing:
        return []
    halo = candidates.run_settings.get("halo")
    now = f" from {tuple(halo)}" if halo is not None else ""
    return [
        f"raise {label('halo')}{now} or the tile size (all {passing} masks passing the "
        "filters touch a tile edge, so they are dropped as cut)"
    ]


def _among(passing: np.ndarray, name: str) -> str:
    """`` among the 3 passing 'pred iou thresh'`` when that filter drops some candidates."""
    return "" if passing.all() else f" among the {int(passing.sum())} passing {label(name)}"


def no_objects_hint(
    candidates: Candidates,
    filter_settings: Mapping[str, Any],
    *,
    dark_on_bright: bool = False,
) -> str:
    """What to change when these filter settings keep no object of ``candidates``.

    Args:
        candidates: the last run's candidates.
        filter_settings: the filter settings in use (missing ones: Meta's defaults).
        dark_on_bright: the image looks dark on bright and the model saw it uninverted;
            the advice then also says to tick *invert*.

    Returns:
        One sentence, e.g. ``0 objects from 3072 candidates: lower 'pred iou thresh' from
        0.30 to 0.21 (best predicted IoU 0.22).``
    """
    settings = with_filter_defaults(filter_settings)
    n = len(candidates)
    if n == 0:
        per_side = candidates.run_settings.get("points_per_side")
        now = f" from {per_side}" if per_side else ""
        more = "a zoom" if candidates.tiles is not None else "crop layers"
        advice = [f"raise {label('points_per_side')}{now} or add {more}"]
    else:
        advice = score_advice(
            candidates, settings["pred_iou_thresh"], settings["stability_score_thresh"]
        )
        if not advice and candidates.tiles is not None:
            advice = _cut_advice(candidates, settings)
    if dark_on_bright:
        advice.insert(0, "tick 'invert' and Run again (the image looks dark on bright)")
    head = f"0 objects from {n} candidate{'s' if n != 1 else ''}"
    if not advice:
        return f"{head}: every mask that passes the filters is empty."
    if n == 0:
        head = "0 objects: the model proposed no mask"
    return f"{head}: " + ", or ".join(advice) + "."


__all__ = [
    "STEP",
    "iou_setting_for",
    "label",
    "no_objects_hint",
    "score_advice",
    "stability_setting_for",
]
