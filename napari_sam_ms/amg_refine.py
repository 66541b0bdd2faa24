"""Re-filter whole-image candidates without running the model again (numpy only).

:class:`SamAutomaticMaskGenerator` applies its filters while it runs. To let users tune the
filters with sliders, :func:`collect_candidates` runs it once with every filter open
(``pred_iou_thresh=0``, ``stability_score_thresh=0``, both NMS thresholds 1.0, which suppress
nothing, and ``min_mask_region_area=0``), keeping each candidate's scores, box, crop and RLE.
:func:`refilter` then applies any filter settings in the generator's own order:

1. per crop: predicted IoU ``> pred_iou_thresh``, stability ``>= stability_score_thresh``
   (each only when its threshold is > 0, as Meta's code), then box NMS by predicted IoU;
2. between crops (when there are several): NMS preferring smaller crops;
3. if ``mask_overlap_thresh < 1``: mask-overlap suppression (the generator's ``overlap_keep``);
4. if ``min_mask_region_area > 0``: the generator's ``postprocess_small_regions``.

The per-mask filters commute with everything before them, the permissive NMS keeps every
candidate and only sorts it (stably) by the same score, so the result equals a direct run
with those settings (tested on the tiny model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .automatic_mask_generator import ProgressCallback, SamAutomaticMaskGenerator, overlap_keep
from .modeling import Sam
from .utils.amg import MaskData, box_area, generate_crop_boxes, nms, rle_to_mask
from .utils.labels import masks_to_labels

# Settings that only filter candidates (cheap to change) and Meta's defaults for them.
FILTER_DEFAULTS: dict[str, float] = {
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "box_nms_thresh": 0.7,
    "crop_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "mask_overlap_thresh": 1.0,  # ours, not Meta's: 1.0 is off
}
# Settings that change what the model is asked (changing them needs a new run).
RUN_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "stability_score_offset": 1.0,
    "crop_n_layers": 0,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "mirror_average": False,  # ours, not Meta's (on for the embedded model)
}
_OPEN = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "crop_nms_thresh": 1.0,
    "min_mask_region_area": 0,
    "mask_overlap_thresh": 1.0,
}


@dataclass
class Candidates:
    """Every candidate mask of one image, grouped per crop in the generator's crop order."""

    shape: tuple[int, int]
    crop_boxes: list[list[int]]
    crops: list[MaskData]
    run_settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(c) for c in self.crops)


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split generator settings into (run settings, filter settings), filling defaults."""
    unknown = set(settings) - set(RUN_DEFAULTS) - set(FILTER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    run = {k: settings.get(k, v) for k, v in RUN_DEFAULTS.items()}
    flt = {k: settings.get(k, v) for k, v in FILTER_DEFAULTS.items()}
    return run, flt


def collect_candidates(
    model: Sam,
    image: np.ndarray,
    progress: ProgressCallback | None = None,
    **run_settings: Any,
) -> Candidates:
    """Run the generator once with all filters open and keep every candidate.

    Args:
        model: the SAM model.
        image: (H, W, 3) uint8 RGB (other forms are converted as the generator does).
        progress: ``callback(done, total)``; returning False cancels
            (raises :class:`GenerationCancelled`).
        run_settings: the generator's non-filter settings (see ``RUN_DEFAULTS``).
    """
    run, _ = split_settings(run_settings)
    gen = SamAutomaticMaskGenerator(model, **run, **_OPEN, output_mode="uncompressed_rle")
    records = gen.generate(image, progress=progress)
    h, w = records[0]["segmentation"]["size"] if records else np.asarray(image).shape[:2]
    crop_boxes, _ = generate_crop_boxes((h, w), run["crop_n_layers"], run["crop_overlap_ratio"])
    index = {tuple(int(v) for v in b): i for i, b in enumerate(crop_boxes)}
    groups: list[list[dict]] = [[] for _ in crop_boxes]
    for rec in records:  # stable: keeps each crop's order (decreasing predicted IoU)
        x, y, bw, bh = rec["crop_box"]
        groups[index[(int(x), int(y), int(x + bw), int(y + bh))]].append(rec)
    crops = [_to_mask_data(g) for g in groups]
    return Candidates((int(h), int(w)), [list(b) for b in crop_boxes], crops, run)


def _to_mask_data(records: list[dict]) -> MaskData:
    def xyxy(b):
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    return MaskData(
        iou_preds=np.array([r["predicted_iou"] for r in records], np.float32),
        stability_score=np.array([r["stability_score"] for r in records], np.float32),
        boxes=np.array([xyxy(r["bbox"]) for r in records], np.int64).reshape(-1, 4),
        crop_boxes=np.array([xyxy(r["crop_box"]) for r in records], np.int64).reshape(-1, 4),
        points=np.array([r["point_coords"][0] for r in records], np.float64).reshape(-1, 2),
        rles=[r["segmentation"] for r in records],
    )


def refilter_data(
    cands: Candidates,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    box_nms_thresh: float = 0.7,
    crop_nms_thresh: float = 0.7,
    min_mask_region_area: float = 0,
    mask_overlap_thresh: float = 1.0,
) -> MaskData:
    """The candidates the generator would keep with these filter settings."""
    out = MaskData(
        iou_preds=np.zeros(0, np.float32),
        stability_score=np.zeros(0, np.float32),
        boxes=np.zeros((0, 4), np.int64),
        crop_boxes=np.zeros((0, 4), np.int64),
        points=np.zeros((0, 2), np.float64),
        rles=[],
    )
    for crop in cands.crops:
        data = MaskData(**dict(crop.items()))  # shallow copy: filter() builds new containers
        if pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > np.float32(pred_iou_thresh))
        if stability_score_thresh > 0.0:
            with np.errstate(invalid="ignore"):
                data.filter(data["stability_score"] >= np.float32(stability_score_thresh))
        data.filter(nms(data["boxes"], data["iou_preds"], box_nms_thresh))
        out.cat(data)
    if len(cands.crop_boxes) > 1:
        scores = np.float32(1) / box_area(out["crop_boxes"]).astype(np.float32)
        out.filter(nms(out["boxes"], scores, crop_nms_thresh))
    if mask_overlap_thresh < 1.0:
        out.filter(overlap_keep(out, mask_overlap_thresh))
    if min_mask_region_area > 0:
        out["rles"] = list(out["rles"])  # postprocessing edits entries in place
        out["boxes"] = out["boxes"].copy()
        out = SamAutomaticMaskGenerator.postprocess_small_regions(
            out, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh)
        )
    return out


def refilter(cands: Candidates, **filter_settings: float) -> list[dict[str, Any]]:
    """Records like the generator's (binary masks), for these filter settings."""
    _, flt = split_settings(filter_settings)
    data = refilter_data(cands, **flt)
    return [
        {
            "segmentation": rle_to_mask(rle),
            "area": int(sum(rle["counts"][1::2])),
            "bbox": [int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])],
            "predicted_iou": float(iou),
            "point_coords": [list(map(float, p))],
            "stability_score": float(s),
            "crop_box": [int(c[0]), int(c[1]), int(c[2] - c[0]), int(c[3] - c[1])],
        }
        for rle, b, iou, p, s, c in zip(
            data["rles"],
            data["boxes"],
            data["iou_preds"],
            data["points"],
            data["stability_score"],
            data["crop_boxes"],
            strict=True,
        )
    ]


def refilter_labels(cands: Candidates, **filter_settings: float) -> np.ndarray:
    """Label image 1..N (largest first, smaller masks on top) for these filter settings."""
    return masks_to_labels(refilter(cands, **filter_settings), cands.shape)


__all__ = [
    "FILTER_DEFAULTS",
    "RUN_DEFAULTS",
    "Candidates",
    "collect_candidates",
    "refilter",
    "refilter_data",
    "refilter_labels",
    "split_settings",
]
