"""Whole-image segmentation's model step: one batch of grid points -> candidate masks that
pass the per-mask filters (predicted IoU, stability), as Meta's ``_process_batch`` computes
them (used by :class:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator` for
crops and tiles alike).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .amg_refine import iou_keep, stability_keep
from .amg_tiles import native_logits
from .engine import long_job
from .utils.amg import MaskData, calculate_stability_score
from .utils.masks import upscale_masks

# Candidate masks upscaled to full resolution at once (16 float32 1024x768 masks: 50 MB).
_UPSCALE_CHUNK = 16


def decode_points(
    predictor: Any,
    points: np.ndarray,
    model_points: np.ndarray,
    model_size: tuple[int, ...],
    mask_size: tuple[int, ...],
    filters: tuple[float, float, float],
    zoom: int | None = None,
) -> MaskData:
    """Candidates of one batch of points that pass the predicted-IoU and stability filters,
    with their ``masks`` of ``mask_size``.

    Args:
        predictor: a :class:`~napari_sam_ms.predictor.SamPredictor` (or mirror-averaged
            one) holding the image's embedding.
        points: (N, 2) points (x, y) as the records give them.
        model_points: ``points`` in the embedded image (``model_size``; with ``zoom`` a tile
            canvas, see :func:`~napari_sam_ms.amg_tiles.native_logits`).
        filters: ``(pred_iou_thresh, stability_score_thresh, stability_score_offset)``.

    Filtered by predicted IoU before the masks are computed (the IoU head does not depend on
    them): the same masks as Meta's order.
    """
    iou_thresh, stability_thresh, stability_offset = filters
    mask_threshold = predictor.model.mask_threshold
    transformed = predictor.transform.apply_coords(model_points, model_size)
    with long_job(predictor):  # its graphs compile on its path (not op by op in a warm-up)
        iou_preds, selected, low_res = predictor.decode_selected(
            transformed[:, None, :],
            np.ones((len(points), 1), np.int32),
            multimask_output=True,
            min_iou=np.float32(iou_thresh) if iou_thresh > 0.0 else None,
        )
    n_out = iou_preds.shape[1]
    data = MaskData(iou_preds=iou_preds.reshape(-1), points=np.repeat(points, n_out, axis=0))
    keep = np.flatnonzero(iou_keep(data["iou_preds"], iou_thresh))
    data.filter(keep)
    rows = np.searchsorted(selected, keep // n_out) * n_out + keep % n_out  # computed rows
    low_res = low_res.asnumpy().reshape((-1, 1) + tuple(low_res.shape[2:]))
    stability, masks = [np.zeros(0, np.float32)], [np.zeros((0, *mask_size), bool)]
    for start in range(0, len(rows), _UPSCALE_CHUNK):
        part = low_res[rows[start : start + _UPSCALE_CHUNK]]
        size = tuple(mask_size) if zoom is None else predictor.original_size
        logits = upscale_masks(part, predictor.model.img_size, predictor.input_size, size)
        logits = logits[:, 0] if zoom is None else native_logits(logits[:, 0], mask_size, zoom)
        stability.append(calculate_stability_score(logits, mask_threshold, stability_offset))
        masks.append(logits > mask_threshold)
    data["masks"] = np.concatenate(masks)
    data["stability_score"] = np.concatenate(stability)
    data.filter(stability_keep(data["stability_score"], stability_thresh))
    return data


__all__ = ["decode_points"]
