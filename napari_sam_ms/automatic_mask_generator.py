"""Whole-image segmentation: prompt SAM with a grid of points and keep the good, distinct
masks (mirrors ``segment_anything/automatic_mask_generator.py``).

Progress and cancelling: ``generate(image, progress=callback)`` calls ``callback(done, total)``
once before the first batch (``done=0``) and after every batch of points, counting batches
over all crops. If the callback returns ``False`` the run stops and :class:`GenerationCancelled`
is raised (any other return value, including ``None``, continues). A napari thread worker can
pass ``lambda done, total: not worker.abort_requested`` and report the numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .mirror_average import MirrorAveragedPredictor
from .modeling import Sam
from .predictor import SamPredictor
from .utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_overlap_keep,
    mask_to_rle,
    nms,
    remove_small_regions,
    rle_as_lists,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .utils.image import to_rgb_uint8

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Candidate masks upscaled to full resolution at once in whole-image mode (memory bound:
# 16 float32 masks of a 1024x768 image are 50 MB).
_UPSCALE_CHUNK = 16

ProgressCallback = Callable[[int, int], Any]


class GenerationCancelled(RuntimeError):
    """Raised by :meth:`SamAutomaticMaskGenerator.generate` when its progress callback
    returns False."""


class SamAutomaticMaskGenerator:
    """Segment a whole image by prompting SAM with a grid of points.

    Candidate masks are filtered by predicted IoU and stability, duplicates are removed by
    box NMS (within a crop with ``box_nms_thresh``, between crops with ``crop_nms_thresh``),
    and optionally small holes and islands are cleaned up. Defaults are Meta's (chosen for
    ViT-H). A threshold of 0 turns its filter off, as in Meta's code.

    The generator embeds images with its own :class:`SamPredictor`, so it never replaces the
    embedding of an interactive predictor built on the same model.

    Args:
        model: the SAM model.
        points_per_side: grid points along each side of the image (points_per_side**2 in
            all); None when ``point_grids`` is given.
        points_per_batch: points run through the decoder at once (memory vs speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0: keep all).
        stability_score_thresh: keep masks whose stability score is at least this (0: all).
        stability_score_offset: logit offset used to compute the stability score.
        box_nms_thresh: box IoU above which duplicate masks within a crop are dropped.
        crop_n_layers: if > 0, also segment crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU above which duplicates between crops are dropped.
        crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by factor**i.
        point_grids: explicit (N, 2) grids of (x, y) in [0, 1], one per crop layer.
        min_mask_region_area: if > 0, remove islands and fill holes smaller than this many
            pixels (needs opencv).
        output_mode: ``binary_mask`` (H x W bool), ``uncompressed_rle`` or ``coco_rle``
            (needs pycocotools).
        mask_overlap_thresh: not in Meta's generator (1.0, the default, turns it off): after
            the box NMS, masks ranked by predicted IoU x stability score are dropped when more
            than this fraction of their area lies under masks kept before them
            (:func:`~napari_sam_ms.utils.amg.mask_overlap_keep`). Unlike a low box NMS it
            keeps both of two touching objects whose boxes overlap, and it drops masks that
            span objects already kept; the embedded micro model uses it.
        mirror_average: not in Meta's generator (False, the default, is Meta's behaviour):
            every grid point's masks and predicted IoUs are averaged over the image and its
            mirror images (:class:`~napari_sam_ms.mirror_average.MirrorAveragedPredictor`;
            about four times the time). The embedded micro model uses it.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        mask_overlap_thresh: float = 1.0,
        mirror_average: bool = False,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side (a number) or point_grids (explicit grids); "
                f"got points_per_side={points_per_side!r} and "
                f"point_grids={'None' if point_grids is None else 'given'}"
            )
        crop_n_layers = _int(crop_n_layers, "crop_n_layers", minimum=0)
        crop_n_points_downscale_factor = _int(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", minimum=1
        )
        if points_per_side is not None:
            points_per_side = _int(points_per_side, "points_per_side", minimum=1)
            last = int(points_per_side / crop_n_points_downscale_factor**crop_n_layers)
            if last < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} divided by "
                    f"crop_n_points_downscale_factor**crop_n_layers = "
                    f"{crop_n_points_downscale_factor}**{crop_n_layers} leaves no points in "
                    "the last crop layer"
                )
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = _check_point_grids(point_grids, crop_n_layers)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {OUTPUT_MODES}")
        if output_mode == "coco_rle":
            # Fail now, with a clear message, if pycocotools is missing.
            coco_encode_rle({"size": [1, 1], "counts": [1]})

        self.mirror_average = bool(mirror_average)
        self.predictor = MirrorAveragedPredictor(model) if mirror_average else SamPredictor(model)
        self.points_per_side = points_per_side
        self.points_per_batch = _int(points_per_batch, "points_per_batch", minimum=1)
        self.pred_iou_thresh = _float(pred_iou_thresh, "pred_iou_thresh")
        self.stability_score_thresh = _float(stability_score_thresh, "stability_score_thresh")
        self.stability_score_offset = _float(stability_score_offset, "stability_score_offset")
        self.box_nms_thresh = _float(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = _float(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = _float(crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0)
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        _float(min_mask_region_area, "min_mask_region_area", 0.0)
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.mask_overlap_thresh = _float(mask_overlap_thresh, "mask_overlap_thresh", 0.0, 1.0)

    # ------------------------------------------------------------------ public
    def generate(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> list[dict[str, Any]]:
        """Segment the whole image.

        Args:
            image: (H, W, 3) uint8 RGB; grayscale, RGBA and other dtypes are converted as the
                predictor does (:func:`napari_sam_ms.utils.image.to_rgb_uint8`).
            progress: optional ``callback(done, total)`` in batches of points; returning
                False cancels (see the module docstring).

        Returns:
            One record per mask, best first, as Meta's generator: ``segmentation`` (per
            ``output_mode``), ``area`` (pixels), ``bbox`` (x, y, w, h), ``predicted_iou``,
            ``point_coords`` ([[x, y]] the prompt, float pixels), ``stability_score`` and
            ``crop_box`` (x, y, w, h). Boxes are Python ints (Meta's hold the same values,
            as ints or floats depending on whether some batch came out empty).

        Raises:
            GenerationCancelled: the progress callback returned False.
        """
        image = to_rgb_uint8(image)
        mask_data = self._generate_masks(image, progress)
        if self.mask_overlap_thresh < 1.0:
            mask_data.filter(overlap_keep(mask_data, self.mask_overlap_thresh))

        if self.min_mask_region_area > 0:
            mask_data = self.postprocess_small_regions(
                mask_data,
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
            )

        rles = mask_data["rles"]
        if self.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle_as_lists(rle)) for rle in rles]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in rles]
        else:
            segmentations = [rle_as_lists(rle) for rle in rles]

        boxes = box_xyxy_to_xywh(mask_data["boxes"]).tolist()
        crop_boxes = box_xyxy_to_xywh(mask_data["crop_boxes"]).tolist()
        points = mask_data["points"].tolist()
        ious = mask_data["iou_preds"].tolist()
        stability = mask_data["stability_score"].tolist()
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

    # --------------------------------------------------------------- internals
    def _generate_masks(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        counter = _Progress(
            progress,
            sum(
                math.ceil(len(self.point_grids[layer]) / self.points_per_batch)
                for layer in layer_idxs
            ),
        )
        counter.report()

        data = _empty_mask_data()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size, counter))

        # Remove duplicates between crops, preferring masks from smaller crops.
        if len(crop_boxes) > 1:
            scores = np.float32(1) / box_area(data["crop_boxes"]).astype(np.float32)
            data.filter(nms(data["boxes"], scores, self.crop_nms_thresh))
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
        counter: _Progress | None = None,
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        self.predictor.set_image(cropped_im)

        # Grid points in crop pixels (x, y).
        points_scale = np.array(cropped_im_size, dtype=np.float64)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale

        data = MaskData()
        try:
            for (points,) in batch_iterator(self.points_per_batch, points_for_image):
                data.cat(self._process_batch(points, cropped_im_size, crop_box, orig_size))
                if counter is not None:
                    counter.step()
        finally:
            self.predictor.reset_image()

        # Remove duplicates within this crop.
        data.filter(nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))

        # Back to the frame of the whole image.
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(data["rles"]), 1))
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        orig_h, orig_w = orig_size
        mask_threshold = self.predictor.model.mask_threshold

        # One foreground point per prompt; three candidate masks each. The predicted IoU
        # does not depend on the masks, so candidates are filtered by it first, and only
        # the prompts with a surviving candidate get their low-res masks computed, and
        # only the survivors are upscaled to full resolution: the same masks as Meta's
        # order (compute and upscale all, then filter), without the work on dropped ones.
        iou_thresh = np.float32(self.pred_iou_thresh)
        transformed = self.predictor.transform.apply_coords(points, im_size)
        labels = np.ones((len(points), 1), np.int32)
        iou_preds, selected, low_res = self.predictor.decode_selected(
            transformed[:, None, :],
            labels,
            multimask_output=True,
            min_iou=iou_thresh if self.pred_iou_thresh > 0.0 else None,
        )
        n_out = iou_preds.shape[1]
        data = MaskData(iou_preds=iou_preds.reshape(-1), points=np.repeat(points, n_out, axis=0))
        keep = np.arange(len(data))
        if self.pred_iou_thresh > 0.0:
            keep = np.flatnonzero(data["iou_preds"] > iou_thresh)
            data.filter(keep)
        # Row of each kept candidate among the computed ones.
        rows = np.searchsorted(selected, keep // n_out) * n_out + keep % n_out
        low_res = low_res.asnumpy().reshape((-1, 1) + tuple(low_res.shape[2:]))
        # Full-resolution logits a few masks at a time: only their stability scores and
        # thresholded masks are kept (Meta holds the logits of the whole batch at once).
        stability, masks = [], [np.zeros((0, *im_size), bool)]
        predictor = self.predictor
        for start in range(0, len(rows), _UPSCALE_CHUNK):
            part = low_res[rows[start : start + _UPSCALE_CHUNK]]
            logits = predictor.model.upscale_masks(
                part, predictor.input_size, predictor.original_size
            )[:, 0]
            stability.append(
                calculate_stability_score(logits, mask_threshold, self.stability_score_offset)
            )
            masks.append(logits > mask_threshold)
        data["masks"] = np.concatenate(masks)
        data["stability_score"] = np.concatenate([np.zeros(0, np.float32), *stability])
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= np.float32(self.stability_score_thresh))

        data["boxes"] = batched_mask_to_box(data["masks"])

        # Drop masks cut by the crop border (unless it is the image border).
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not keep.all():
            data.filter(keep)

        # Compact RLEs (int32 counts): hundreds of candidates per batch can be kept.
        masks = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle(masks, compact=True)
        del data["masks"]
        return data

    @staticmethod
    def postprocess_small_regions(
        mask_data: MaskData, min_area: float, nms_thresh: float
    ) -> MaskData:
        """Fill small holes and remove small islands of every mask, then rerun box NMS,
        preferring masks that needed no change. Edits ``mask_data`` in place."""
        if len(mask_data["rles"]) == 0:
            return mask_data

        new_masks = []
        scores = []
        for rle in mask_data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))

        masks = np.stack(new_masks)
        boxes = batched_mask_to_box(masks)
        keep = nms(boxes, np.asarray(scores, np.float32), nms_thresh)

        # Re-encode only the kept masks that changed.
        for i in keep:
            if scores[i] == 0.0:
                mask_data["rles"][i] = mask_to_rle(masks[i][None], compact=True)[0]
                mask_data["boxes"][i] = boxes[i]
        mask_data.filter(keep)
        return mask_data


class _Progress:
    """Counts batches, reports them and raises GenerationCancelled on request."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0

    def report(self) -> None:
        if self.callback is not None and self.callback(self.done, self.total) is False:
            raise GenerationCancelled(
                f"whole-image segmentation cancelled after {self.done} of {self.total} batches"
            )

    def step(self) -> None:
        self.done += 1
        self.report()


def overlap_keep(data: MaskData, max_overlap: float) -> np.ndarray:
    """:func:`mask_overlap_keep` on a MaskData, ranked by predicted IoU x stability score."""
    scores = data["iou_preds"].astype(np.float64) * data["stability_score"]
    return mask_overlap_keep(data["rles"], data["boxes"], scores, max_overlap)


def _empty_mask_data() -> MaskData:
    """MaskData with every key a batch produces, holding no masks."""
    return MaskData(
        iou_preds=np.zeros(0, np.float32),
        points=np.zeros((0, 2), np.float64),
        stability_score=np.zeros(0, np.float32),
        boxes=np.zeros((0, 4), np.int64),
        rles=[],
        crop_boxes=np.zeros((0, 4), np.int64),
    )


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _float(
    value: Any, name: str, minimum: float | None = None, maximum: float | None = None
) -> float:
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


def _check_point_grids(point_grids: Sequence[np.ndarray], crop_n_layers: int) -> list[np.ndarray]:
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


__all__ = ["GenerationCancelled", "OUTPUT_MODES", "SamAutomaticMaskGenerator"]
