"""Whole-image segmentation: prompt SAM with a grid of points and keep the good, distinct
masks (mirrors ``segment_anything/automatic_mask_generator.py``).

:meth:`SamAutomaticMaskGenerator.generate` runs three stages: ``collect`` (the model: candidate
masks per crop), then :func:`~napari_sam_ms.amg_refine.filter_candidates` (scores, NMS,
overlap, small regions) and :func:`~napari_sam_ms.amg_refine.mask_records` (Meta's records),
which re-filtering runs on cached candidates (:func:`collect_candidates`).

Progress: ``progress(done, total)`` is called before the first batch of points (``done=0``)
and after every batch, counting over all crops; returning ``False`` raises
:class:`GenerationCancelled` (a :class:`napari_sam_ms.progress.Cancelled`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .amg_refine import (
    FILTER_ARGS,
    Candidates,
    empty_mask_data,
    filter_candidates,
    iou_keep,
    mask_records,
    postprocess_small_regions,
    stability_keep,
)
from .amg_settings import META_DEFAULTS, SETTINGS, help_text, names
from .mirror_average import MirrorAveragedPredictor
from .modeling import Sam
from .predictor import SamPredictor
from .progress import Cancelled, ProgressCallback
from .utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .utils.image import invert_for_model, to_rgb_uint8
from .utils.masks import upscale_masks

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Candidate masks upscaled to full resolution at once (16 float32 1024x768 masks: 50 MB).
_UPSCALE_CHUNK = 16


class GenerationCancelled(Cancelled):
    """Raised by :meth:`SamAutomaticMaskGenerator.generate` when its progress callback
    returns False."""


class SamAutomaticMaskGenerator:
    """Segment a whole image by prompting SAM with a grid of points.

    Defaults are Meta's (chosen for ViT-H); :data:`napari_sam_ms.amg_settings.SETTINGS`
    holds every setting with its default, stage and help. A threshold of 0 turns its filter
    off, as in Meta's code. Images are embedded by the generator's own predictor, so an
    interactive predictor on the same model keeps its embedding.

    Args:
        model: the SAM model.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = META_DEFAULTS["points_per_side"],
        points_per_batch: int = META_DEFAULTS["points_per_batch"],
        pred_iou_thresh: float = META_DEFAULTS["pred_iou_thresh"],
        stability_score_thresh: float = META_DEFAULTS["stability_score_thresh"],
        stability_score_offset: float = META_DEFAULTS["stability_score_offset"],
        box_nms_thresh: float = META_DEFAULTS["box_nms_thresh"],
        crop_n_layers: int = META_DEFAULTS["crop_n_layers"],
        crop_nms_thresh: float = META_DEFAULTS["crop_nms_thresh"],
        crop_overlap_ratio: float = META_DEFAULTS["crop_overlap_ratio"],
        crop_n_points_downscale_factor: int = META_DEFAULTS["crop_n_points_downscale_factor"],
        point_grids: Sequence[np.ndarray] | None = META_DEFAULTS["point_grids"],
        min_mask_region_area: int = META_DEFAULTS["min_mask_region_area"],
        output_mode: str = META_DEFAULTS["output_mode"],
        mask_overlap_thresh: float = META_DEFAULTS["mask_overlap_thresh"],
        mirror_average: bool = META_DEFAULTS["mirror_average"],
        invert: bool = META_DEFAULTS["invert"],
    ) -> None:
        self.crop_n_layers = _int(crop_n_layers, "crop_n_layers", minimum=0)
        self.crop_n_points_downscale_factor = _int(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", minimum=1
        )
        self.points_per_side = points_per_side
        self.point_grids = self._grids(points_per_side, point_grids)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {OUTPUT_MODES}")
        if output_mode == "coco_rle":
            coco_encode_rle({"size": [1, 1], "counts": [1]})  # fails now if pycocotools is missing
        self.output_mode = output_mode
        self.mirror_average = bool(mirror_average)
        self.invert = bool(invert)
        self.predictor = MirrorAveragedPredictor(model) if mirror_average else SamPredictor(model)
        self.points_per_batch = _int(points_per_batch, "points_per_batch", minimum=1)
        self.pred_iou_thresh = _float(pred_iou_thresh, "pred_iou_thresh")
        self.stability_score_thresh = _float(stability_score_thresh, "stability_score_thresh")
        self.stability_score_offset = _float(stability_score_offset, "stability_score_offset")
        self.box_nms_thresh = _float(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_nms_thresh = _float(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = _float(crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0)
        _float(min_mask_region_area, "min_mask_region_area", 0.0)
        self.min_mask_region_area = min_mask_region_area
        self.mask_overlap_thresh = _float(mask_overlap_thresh, "mask_overlap_thresh", 0.0, 1.0)

    def _grids(
        self, points_per_side: int | None, point_grids: Sequence[np.ndarray] | None
    ) -> list[np.ndarray]:
        """The point grid of every crop layer, from exactly one of the two arguments."""
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side (a number) or point_grids (explicit grids); "
                f"got points_per_side={points_per_side!r} and "
                f"point_grids={'None' if point_grids is None else 'given'}"
            )
        if point_grids is not None:
            return _check_point_grids(point_grids, self.crop_n_layers)
        n = _int(points_per_side, "points_per_side", minimum=1)
        factor, layers = self.crop_n_points_downscale_factor, self.crop_n_layers
        if int(n / factor**layers) < 1:
            raise ValueError(
                f"points_per_side={n} divided by crop_n_points_downscale_factor**crop_n_layers"
                f" = {factor}**{layers} leaves no points in the last crop layer"
            )
        return build_all_layer_point_grids(n, layers, factor)

    def filter_settings(self) -> dict[str, Any]:
        """This generator's filter-stage settings (the arguments of :func:`filter_candidates`)."""
        return {k: getattr(self, k) for k in FILTER_ARGS}

    # ------------------------------------------------------------------ stages
    def generate(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> list[dict[str, Any]]:
        """Segment the whole image: :meth:`collect`, :func:`filter_candidates`,
        :func:`mask_records`.

        Args:
            image: (H, W, 3) uint8 RGB; other forms are converted as the predictor does.
            progress: optional ``callback(done, total)`` in batches of points.

        Returns:
            One record per mask, best first, as Meta's generator: ``segmentation`` (per
            ``output_mode``), ``area``, ``bbox`` (x, y, w, h), ``predicted_iou``,
            ``point_coords`` ([[x, y]]), ``stability_score`` and ``crop_box`` (x, y, w, h).

        Raises:
            GenerationCancelled: the progress callback returned False.
        """
        kept = filter_candidates(self.collect(image, progress), **self.filter_settings())
        return mask_records(kept, self.output_mode)

    def collect(self, image: np.ndarray, progress: ProgressCallback | None = None) -> Candidates:
        """Run the model on every crop and keep the candidate masks.

        Only the per-mask filters (predicted IoU, stability) apply here, so the masks of
        candidates they drop are never computed; with both at 0 every candidate is kept.
        With ``invert`` the model sees ``255 - image`` (8-bit RGB); masks are in the same pixels.
        """
        image = invert_for_model(image) if self.invert else to_rgb_uint8(image)
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        batches = [math.ceil(len(self.point_grids[i]) / self.points_per_batch) for i in layer_idxs]
        counter = _Progress(progress, sum(batches))
        counter.report()
        crops = [
            self._collect_crop(image, list(box), layer, orig_size, counter)
            for box, layer in zip(crop_boxes, layer_idxs, strict=True)
        ]
        run = {k: getattr(self, k) for k in RUN_ARGS}
        return Candidates(
            (int(orig_size[0]), int(orig_size[1])), [list(b) for b in crop_boxes], crops, run
        )

    def _collect_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
        counter: _Progress,
    ) -> MaskData:
        """Candidates of one crop, in image pixels."""
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        self.predictor.set_image(cropped_im)
        points_scale = np.array(cropped_im_size, dtype=np.float64)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale  # (x, y) crop pixels

        data = empty_mask_data()
        try:
            for (points,) in batch_iterator(self.points_per_batch, points_for_image):
                data.cat(self._collect_batch(points, cropped_im_size, crop_box, orig_size))
                counter.step()
        finally:
            self.predictor.reset_image()
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(data["rles"]), 1))
        return data

    def _collect_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        """Candidates of one batch of points (boxes in crop pixels).

        Candidates are filtered by predicted IoU before their masks are computed and
        upscaled (the IoU head does not depend on them): the same masks as Meta's order.
        """
        orig_h, orig_w = orig_size
        predictor = self.predictor
        mask_threshold = predictor.model.mask_threshold
        transformed = predictor.transform.apply_coords(points, im_size)
        iou_preds, selected, low_res = predictor.decode_selected(
            transformed[:, None, :],
            np.ones((len(points), 1), np.int32),
            multimask_output=True,
            min_iou=np.float32(self.pred_iou_thresh) if self.pred_iou_thresh > 0.0 else None,
        )
        n_out = iou_preds.shape[1]
        data = MaskData(iou_preds=iou_preds.reshape(-1), points=np.repeat(points, n_out, axis=0))
        keep = np.flatnonzero(iou_keep(data["iou_preds"], self.pred_iou_thresh))
        data.filter(keep)
        rows = np.searchsorted(selected, keep // n_out) * n_out + keep % n_out  # computed rows
        low_res = low_res.asnumpy().reshape((-1, 1) + tuple(low_res.shape[2:]))
        stability, masks = [np.zeros(0, np.float32)], [np.zeros((0, *im_size), bool)]
        for start in range(0, len(rows), _UPSCALE_CHUNK):
            part = low_res[rows[start : start + _UPSCALE_CHUNK]]
            logits = upscale_masks(
                part, predictor.model.img_size, predictor.input_size, predictor.original_size
            )[:, 0]
            stability.append(
                calculate_stability_score(logits, mask_threshold, self.stability_score_offset)
            )
            masks.append(logits > mask_threshold)
        data["masks"] = np.concatenate(masks)
        data["stability_score"] = np.concatenate(stability)
        data.filter(stability_keep(data["stability_score"], self.stability_score_thresh))
        data["boxes"] = batched_mask_to_box(data["masks"])
        # Drop masks cut by the crop border (unless it is the image border).
        data.filter(~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h]))
        data["rles"] = mask_to_rle(
            uncrop_masks(data["masks"], crop_box, orig_h, orig_w), compact=True
        )
        del data["masks"]
        return data

    postprocess_small_regions = staticmethod(postprocess_small_regions)


# The Args section lists every setting with the table's help text.
SamAutomaticMaskGenerator.__doc__ = (SamAutomaticMaskGenerator.__doc__ or "").rstrip() + "".join(
    f"\n        {name}: {help_text(name)}" for name in SETTINGS
)

# Settings a run is made with (kept with its candidates).
RUN_ARGS = tuple(n for n in names("run") if n != "point_grids")


def collect_candidates(
    model: Sam, image: np.ndarray, progress: ProgressCallback | None = None, **run_settings: Any
) -> Candidates:
    """Every candidate mask of one image, for re-filtering (:mod:`napari_sam_ms.amg_refine`).

    Args:
        model: the SAM model.
        image: as :meth:`SamAutomaticMaskGenerator.generate` takes it.
        progress: ``callback(done, total)``; returning False raises GenerationCancelled.
        run_settings: run-stage settings (:data:`RUN_ARGS`); the per-mask filters are open.
    """
    wrong = sorted(set(run_settings) - set(RUN_ARGS))
    if wrong:
        raise ValueError(f"not run settings: {', '.join(wrong)}; use {RUN_ARGS}")
    gen = SamAutomaticMaskGenerator(
        model, **run_settings, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    return gen.collect(image, progress)


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


__all__ = [
    "GenerationCancelled",
    "OUTPUT_MODES",
    "RUN_ARGS",
    "SamAutomaticMaskGenerator",
    "collect_candidates",
]
