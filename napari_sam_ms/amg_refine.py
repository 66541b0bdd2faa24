"""The stages of whole-image segmentation after the model: filter and records (numpy only).

:class:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator` collects candidate
masks per crop (:class:`Candidates`), then keeps those :func:`filter_candidates` passes and
turns them into Meta's records with :func:`mask_records`. Re-filtering runs the same two on
cached candidates (collected once with the per-mask filters open, e.g. by the widget), so
:func:`refilter` with some settings equals a direct run with them; the filters' sliders use it.
Tiled runs' candidates (``Candidates.tiles``) go through the same functions, which then apply
the tile rules of :mod:`napari_sam_ms.amg_tiles` (cut masks, duplicates across halos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .amg_settings import META_DEFAULTS, SETTINGS, names
from .amg_tiles import (
    FULL_SIZE_LIMIT,
    PlaneBits,
    TileLayout,
    cut_keep,
    dedup_across_tiles,
    local_box,
    paint_labels,
    postprocess_small_regions_tiled,
    record_segmentation,
)
from .utils.amg import (
    MaskData,
    area_from_rle,
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    coco_encode_rle,
    mask_to_rle,
    nms,
    remove_small_regions,
    rle_as_lists,
    rle_to_mask,
)
from .utils.labels import masks_to_labels

# The settings filter_candidates takes (output_mode is mask_records').
FILTER_ARGS = tuple(n for n in names("filter") if n != "output_mode")


@dataclass
class Candidates:
    """Candidate masks of one image, grouped by the crop they came from.

    ``crops[i]`` holds the candidates of ``crop_boxes[i]`` (x0, y0, x1, y1), in the order the
    generator made them, with boxes and points in image pixels and RLE masks. In a tiled run
    (``tiles`` set) the crops are the tiles' outer areas, each mask is an RLE over its crop
    and ``tile_ids`` says which tile made it.
    """

    shape: tuple[int, int]
    crop_boxes: list[list[int]]
    crops: list[MaskData]
    run_settings: dict[str, Any] = field(default_factory=dict)
    tiles: TileLayout | None = None

    def __len__(self) -> int:
        return sum(len(c) for c in self.crops)


def iou_keep(iou_preds: np.ndarray, thresh: float) -> np.ndarray:
    """Candidates whose predicted IoU is above ``thresh`` (all when it is 0)."""
    if thresh > 0.0:
        return iou_preds > np.float32(thresh)
    return np.ones(len(iou_preds), bool)


def stability_keep(stability: np.ndarray, thresh: float) -> np.ndarray:
    """Candidates whose stability score is at least ``thresh`` (all when it is 0)."""
    if thresh > 0.0:
        with np.errstate(invalid="ignore"):
            return stability >= np.float32(thresh)
    return np.ones(len(stability), bool)


def filter_candidates(
    candidates: Candidates,
    *,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    box_nms_thresh: float,
    crop_nms_thresh: float,
    min_mask_region_area: float,
    mask_overlap_thresh: float,
) -> MaskData:
    """The candidates the generator keeps with these settings, best first.

    Per crop (:func:`filter_crop`): predicted IoU, stability, (tiles: masks cut by the tile
    dropped), box NMS; between crops: NMS preferring smaller crops (tiles:
    :func:`~napari_sam_ms.amg_tiles.dedup_across_tiles` with ``crop_nms_thresh``); then mask
    overlap and small-region cleanup. ``candidates`` is not changed.
    """
    tiles = candidates.tiles
    out = empty_mask_data()
    for crop in candidates.crops:
        out.cat(filter_crop(crop, pred_iou_thresh, stability_score_thresh, box_nms_thresh, tiles))
    if tiles is not None:
        out.filter(dedup_across_tiles(out, tiles, crop_nms_thresh))
    elif len(candidates.crops) > 1:
        scores = np.float32(1) / box_area(out["crop_boxes"]).astype(np.float32)
        out.filter(nms(out["boxes"], scores, crop_nms_thresh))
    if mask_overlap_thresh < 1.0:
        out.filter(overlap_keep(out, mask_overlap_thresh, candidates.shape))
    if min_mask_region_area > 0:
        cleanup = postprocess_small_regions if tiles is None else postprocess_small_regions_tiled
        out = cleanup(out, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh))
    return out


def filter_crop(
    crop: MaskData,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    box_nms_thresh: float,
    tiles: TileLayout | None = None,
) -> MaskData:
    """The candidates of one crop (or tile) that pass its own filters (a new MaskData).

    Applying it twice keeps the same candidates, so a tiled run may filter each tile as it
    is collected (bounded memory) and :func:`filter_candidates` still gives the same result.
    """
    data = MaskData(**dict(crop.items()))  # filter() builds new containers
    data.filter(iou_keep(data["iou_preds"], pred_iou_thresh))
    data.filter(stability_keep(data["stability_score"], stability_score_thresh))
    if tiles is not None:
        data.filter(cut_keep(data["boxes"], data["tile_ids"], tiles))
    data.filter(nms(data["boxes"], data["iou_preds"], box_nms_thresh))
    return data


def mask_records(
    data: MaskData, output_mode: str = "binary_mask", plane_shape: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """Meta's mask records of filtered candidates (as :meth:`SamAutomaticMaskGenerator.generate`
    returns them); boxes are Python ints.

    Candidates of a tiled run (with ``tile_ids``; ``plane_shape`` needed) give full-size masks
    on planes of up to :data:`~napari_sam_ms.amg_tiles.FULL_SIZE_LIMIT` pixels (``crop_box``:
    the tile's outer area), else each mask cropped to its box with ``crop_box`` that frame
    (RLE modes: an RLE of that crop).
    """
    rles = data["rles"]
    crop_boxes = box_xyxy_to_xywh(data["crop_boxes"]).tolist()
    if "tile_ids" in data:
        if plane_shape is None:
            raise ValueError("records of a tiled run need the plane shape")
        full = plane_shape if plane_shape[0] * plane_shape[1] <= FULL_SIZE_LIMIT else None
        pairs = [record_segmentation(data, i, output_mode, full) for i in range(len(rles))]
        crop_boxes = [frame for _, frame in pairs]
        segmentations = [seg for seg, _ in pairs]
        if output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle_as_lists(s)) for s in segmentations]
    elif output_mode == "coco_rle":
        segmentations = [coco_encode_rle(rle_as_lists(rle)) for rle in rles]
    elif output_mode == "binary_mask":
        segmentations = [rle_to_mask(rle) for rle in rles]
    else:
        segmentations = [rle_as_lists(rle) for rle in rles]
    boxes = box_xyxy_to_xywh(data["boxes"]).tolist()
    points = data["points"].tolist()
    ious = data["iou_preds"].tolist()
    stability = data["stability_score"].tolist()
    return [
        {
            "segmentation": segmentations[i],
            "area": area_from_rle(rles[i]),
            "bbox": boxes[i],
            "predicted_iou": ious[i],
            "point_coords": [points[i]],
            "stability_score": stability[i],
            "crop_box": crop_boxes[i],
        }
        for i in range(len(rles))
    ]


def mask_overlap_keep(
    rles: Sequence[dict[str, Any]],
    boxes: np.ndarray,
    scores: np.ndarray,
    max_overlap: float,
    crop_boxes: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Which masks survive mask-overlap suppression (a boolean array in input order).

    Masks are taken in decreasing score order (stable for ties); a mask is dropped when
    more than ``max_overlap`` of its own area lies under masks kept before it. Unlike box
    NMS this keeps touching objects whose boxes overlap, and drops a mask that merges two
    objects already kept. ``max_overlap >= 1`` keeps everything (no decoding). Empty masks
    are dropped when the filter is on.

    Args:
        rles: uncompressed RLEs of the (H, W) masks.
        boxes: (N, 4) boxes (x0, y0, x1, y1), inclusive, as :func:`batched_mask_to_box`.
        scores: (N,) ranking scores (NaN ranks last).
        max_overlap: fraction of a mask's area in [0, 1].
        crop_boxes: (N, 4) where each RLE lies in the (H, W) plane ``shape`` (tiled runs:
            RLEs over crops); None: the RLEs are full-size.
    """
    n = len(rles)
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    if scores.shape != (n,) or np.asarray(boxes).shape != (n, 4):
        raise ValueError(f"need one score and one box per mask, got {scores.shape} for {n}")
    keep = np.ones(n, dtype=bool)
    if max_overlap >= 1.0 or n == 0:
        return keep
    if crop_boxes is None:
        shape = tuple(int(v) for v in rles[0]["size"])
    taken = PlaneBits(shape)
    for i in np.argsort(-scores, kind="stable"):
        x0, y0 = int(boxes[i][0]), int(boxes[i][1])
        local = boxes[i] if crop_boxes is None else local_box(boxes[i], crop_boxes[i])
        mask = rle_to_mask(rles[i], local)
        area = np.count_nonzero(mask)
        if area == 0 or taken.count_and(y0, x0, mask) > max_overlap * area:
            keep[i] = False
            continue
        taken.add(y0, x0, mask)
    return keep


def overlap_keep(
    data: MaskData, max_overlap: float, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """:func:`mask_overlap_keep` on a MaskData, ranked by predicted IoU x stability score
    (``shape``: the plane, for a tiled run's crop RLEs)."""
    scores = data["iou_preds"].astype(np.float64) * data["stability_score"]
    if "tile_ids" not in data:
        return mask_overlap_keep(data["rles"], data["boxes"], scores, max_overlap)
    return mask_overlap_keep(
        data["rles"], data["boxes"], scores, max_overlap, data["crop_boxes"], shape
    )


def postprocess_small_regions(mask_data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
    """Fill small holes and remove small islands of every mask, then rerun box NMS,
    preferring masks that needed no change. Edits ``mask_data`` in place."""
    if len(mask_data["rles"]) == 0:
        return mask_data
    new_masks, scores = [], []
    for rle in mask_data["rles"]:
        mask = rle_to_mask(rle)
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        new_masks.append(mask)
        scores.append(float(not (changed_holes or changed_islands)))
    masks = np.stack(new_masks)
    boxes = batched_mask_to_box(masks)
    keep = nms(boxes, np.asarray(scores, np.float32), nms_thresh)
    for i in keep:  # re-encode only the kept masks that changed
        if scores[i] == 0.0:
            mask_data["rles"][i] = mask_to_rle(masks[i][None], compact=True)[0]
            mask_data["boxes"][i] = boxes[i]
    mask_data.filter(keep)
    return mask_data


def empty_mask_data() -> MaskData:
    """MaskData with every key a batch of candidates has, holding no masks."""
    return MaskData(
        iou_preds=np.zeros(0, np.float32),
        points=np.zeros((0, 2), np.float64),
        stability_score=np.zeros(0, np.float32),
        boxes=np.zeros((0, 4), np.int64),
        rles=[],
        crop_boxes=np.zeros((0, 4), np.int64),
    )


def with_filter_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every argument of :func:`filter_candidates`: as given, else Meta's default.

    Raises:
        ValueError: a name that is not a filter setting (run settings need a new run).
    """
    wrong = sorted(set(settings) - set(FILTER_ARGS))
    if wrong:
        run = [n for n in wrong if n in SETTINGS]
        why = f" ({', '.join(run)}: needs a new run)" if run else ""
        raise ValueError(f"not filter settings: {', '.join(wrong)}{why}; use {FILTER_ARGS}")
    return {k: settings.get(k, META_DEFAULTS[k]) for k in FILTER_ARGS}


def refilter_data(candidates: Candidates, **filter_settings: Any) -> MaskData:
    """:func:`filter_candidates` with these settings, the others at Meta's defaults."""
    return filter_candidates(candidates, **with_filter_defaults(filter_settings))


def refilter(
    candidates: Candidates, output_mode: str = "binary_mask", **filter_settings: Any
) -> list[dict[str, Any]]:
    """The records a direct run with these filter settings returns."""
    data = refilter_data(candidates, **filter_settings)
    return mask_records(data, output_mode, candidates.shape)


def refilter_labels(candidates: Candidates, **filter_settings: Any) -> np.ndarray:
    """Label image 1..N (largest first, smaller masks on top) for these filter settings."""
    records = refilter(candidates, **filter_settings)
    if candidates.tiles is None:
        return masks_to_labels(records, candidates.shape)
    return paint_labels(records, candidates.shape)[0]


__all__ = [
    "FILTER_ARGS",
    "Candidates",
    "empty_mask_data",
    "filter_candidates",
    "filter_crop",
    "iou_keep",
    "mask_overlap_keep",
    "mask_records",
    "overlap_keep",
    "postprocess_small_regions",
    "refilter",
    "refilter_data",
    "refilter_labels",
    "stability_keep",
    "with_filter_defaults",
]
