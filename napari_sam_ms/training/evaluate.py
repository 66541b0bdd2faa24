"""Measure a model against instance labels: IoU from one click, from a box, and whole-image
instance F1.

- One click: for each object, a foreground point at its interior point (the maximum of the
  distance transform); of the three masks the one with the highest predicted IoU is kept,
  as the widgets show it. IoU with the object's true mask.
- Box: each object's tight box, single-mask output.
- Whole image: :class:`SamAutomaticMaskGenerator` masks assembled into labels with
  :func:`masks_to_labels` (what users get), matched one to one to the true objects by
  IoU (Hungarian assignment); a match counts at IoU >= 0.5. F1 = 2TP / (2TP + FP + FN).

Beside the model, the baseline a user could have without it: Otsu's threshold inside each
object's box, largest connected component (:func:`otsu_box_mask`), per style family of
``wide`` synthetic samples (:func:`sample_group`).

Prediction goes through :class:`SamPredictor` (resizing, padding and postprocessing of the
inference path); :class:`CompiledPredictor` runs its encoder and decoder as compiled
graphs, with the same results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.filters import threshold_otsu
from skimage.measure import label as label_components

from .. import runtime
from ..predictor import SamPredictor
from ..utils.labels import masks_to_labels
from .prompts import mask_box

MAX_PROMPTS = 64  # objects decoded at once


class CompiledPredictor(SamPredictor):
    """A :class:`SamPredictor` whose image encoder always runs compiled: where the
    predictor runs it as shared stage graphs (CPU default) those, else the whole encoder
    as one graph (the decoder graphs are the predictor's own).

    On CPU the stage graphs are the faster and the only ones that fit in memory for
    vit_b/l/h. The graphs read the model's parameters at every call, so a predictor made
    once keeps following a model that is being trained.
    """

    def __init__(self, sam_model) -> None:
        super().__init__(sam_model)
        self._embed: Callable | None = None

    def _encode(self, transformed_image: Tensor) -> Tensor:
        x = transformed_image.astype(ms.float32)
        if runtime.encoder_graphs_default():
            return super()._encode(x)
        if self._embed is None:
            self._embed = ms.jit(_encoder(self.model))
        return self._embed(x)


def _encoder(model) -> Callable:
    def embed(x):
        return model.image_encoder(model.preprocess(x))

    return embed


# ---------------------------------------------------------------------------------------
# Prompts from labels
# ---------------------------------------------------------------------------------------


def object_ids(labels: np.ndarray) -> np.ndarray:
    """The non-zero ids present in a label image, ascending."""
    ids = np.unique(labels)
    return ids[ids != 0]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel farthest from the object's border (the image edge counts as
    border); ties go to the first in row-major order."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([col, row], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def prompt_ious(
    predictor: SamPredictor,
    image: np.ndarray,
    labels: np.ndarray,
    prompt: str = "point",
    set_image: bool = True,
) -> np.ndarray:
    """IoU of the predicted mask with every object of ``labels`` (ascending ids).

    Args:
        predictor: any SamPredictor (e.g. :class:`CompiledPredictor`).
        image: the image as a user would give it (any dtype the predictor accepts).
        labels: (H, W) instance labels of ``image``.
        prompt: ``point`` (interior point, best of three by predicted IoU) or ``box``.
        set_image: embed ``image`` first (False: it is already set).
    """
    if prompt not in ("point", "box"):
        raise ValueError(f"prompt must be 'point' or 'box', got {prompt!r}")
    if set_image:
        predictor.set_image(image)
    ids = object_ids(labels)
    out = np.zeros(len(ids))
    for start in range(0, len(ids), MAX_PROMPTS):
        chunk = ids[start : start + MAX_PROMPTS]
        gts = [labels == k for k in chunk]
        if prompt == "point":
            coords = np.stack([interior_point(g) for g in gts])[:, None, :]
            masks, scores, _ = predictor.predict_batch(
                coords, np.ones((len(chunk), 1), np.int32), multimask_output=True
            )
            masks = masks[np.arange(len(chunk)), np.argmax(scores, axis=1)]
        else:
            boxes = np.stack([mask_box(g) for g in gts])
            masks = predictor.predict_batch(boxes=boxes, multimask_output=False)[0][:, 0]
        out[start : start + len(chunk)] = [iou(m, g) for m, g in zip(masks, gts, strict=True)]
    return out


def otsu_box_mask(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The baseline: Otsu's threshold inside a box, the largest connected piece, holes filled.

    Polarity comes from the image, not the labels: when the median of the box's one-pixel
    border is above the median of its central half, the object is taken to be darker than
    its surroundings (transmitted light) and the pixels at or below the threshold are kept;
    else those above it. RGB images are averaged over channels.

    Args:
        image: (H, W) or (H, W, C) image, any numeric dtype.
        box: (x0, y0, x1, y1), inclusive pixel indexes (as :func:`mask_box`).

    Returns:
        (H, W) bool mask, empty outside the box.
    """
    gray = np.asarray(image, np.float64)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    out = np.zeros(gray.shape, bool)
    crop = gray[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1]
    if crop.size == 0 or crop.min() == crop.max():
        return out
    h, w = crop.shape
    ring = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    centre = crop[h // 4 : h - h // 4, w // 4 : w - w // 4]
    dark = np.median(ring) > np.median(centre)
    threshold = threshold_otsu(crop)
    fg = crop <= threshold if dark else crop > threshold
    parts = label_components(fg, connectivity=1)
    if parts.max() == 0:
        return out
    largest = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    out[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = ndi.binary_fill_holes(largest)
    return out


def otsu_box_ious(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """IoU of :func:`otsu_box_mask` in every object's tight box (ascending ids)."""
    ids = object_ids(labels)
    gts = [labels == k for k in ids]
    return np.array([iou(otsu_box_mask(image, mask_box(g)), g) for g in gts], np.float64)


def sample_group(item: Any) -> str:
    """Reporting group of a sample: the style family of a ``wide`` synthetic sample, the
    kind of another synthetic sample, ``all`` for a plain (image, labels) pair."""
    style = getattr(item, "style", None)
    return str(style.family) if style is not None else str(getattr(item, "kind", "all"))


def _pair(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of a sample or of an (image, labels) pair."""
    return (item.image, item.labels) if hasattr(item, "labels") else item


def otsu_baseline(samples: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Box mIoU of :func:`otsu_box_mask` per :func:`sample_group` and over ``all`` (no
    model needed): ``{group: {"otsu_box_miou", "n_images", "n_objects"}}``."""
    found: dict[str, list[np.ndarray]] = {}
    for item in samples:
        ious = otsu_box_ious(*_pair(item))
        found.setdefault(sample_group(item), []).append(ious)
        if sample_group(item) != "all":
            found.setdefault("all", []).append(ious)
    return {
        name: {
            "otsu_box_miou": _mean(ious),
            "n_images": len(ious),
            "n_objects": int(sum(len(i) for i in ious)),
        }
        for name, ious in found.items()
    }


def _mean(parts: list[np.ndarray]) -> float:
    joined = np.concatenate(parts) if parts else np.zeros(0)
    return float(joined.mean()) if joined.size else float("nan")


def baseline_table(figures: dict[str, Any]) -> list[str]:
    """Lines comparing the model's box mIoU with the Otsu baseline per group, as
    :func:`evaluate_model` reports them in ``figures["by_group"]``."""
    lines = ["  group          images  objects  box mIoU  Otsu-in-box  margin"]
    for name, g in sorted(figures.get("by_group", {}).items(), key=lambda kv: kv[0] == "all"):
        margin = g["box_miou"] - g["otsu_box_miou"]
        lines.append(
            f"  {name:<14} {g['n_images']:>6}  {g['n_objects']:>7}  {g['box_miou']:>8.3f}"
            f"  {g['otsu_box_miou']:>11.3f}  {margin:+.3f}"
        )
    return lines


# ---------------------------------------------------------------------------------------
# Instance matching
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceScores:
    """One-to-one matching of predicted and true instances at an IoU threshold."""

    tp: int
    fp: int
    fn: int
    matched_iou: float  # mean IoU of the matches (nan if none)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


def iou_matrix(gt_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """(n_gt, n_pred) IoUs between the objects of two label images (ascending ids)."""
    gt_ids, pred_ids = object_ids(gt_labels), object_ids(pred_labels)
    g = np.searchsorted(gt_ids, gt_labels.ravel()) + 1
    g[gt_labels.ravel() == 0] = 0
    p = np.searchsorted(pred_ids, pred_labels.ravel()) + 1
    p[pred_labels.ravel() == 0] = 0
    ng, npred = len(gt_ids) + 1, len(pred_ids) + 1
    counts = np.bincount(g * npred + p, minlength=ng * npred).reshape(ng, npred)
    inter = counts[1:, 1:].astype(np.float64)
    area_g, area_p = counts[1:].sum(1), counts[:, 1:].sum(0)
    union = area_g[:, None] + area_p[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_instances(
    gt_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5
) -> InstanceScores:
    """Hungarian matching on IoU; pairs with IoU >= ``threshold`` are true positives."""
    ious = iou_matrix(np.asarray(gt_labels), np.asarray(pred_labels))
    n_gt, n_pred = ious.shape
    if n_gt == 0 or n_pred == 0:
        return InstanceScores(0, n_pred, n_gt, float("nan"))
    rows, cols = linear_sum_assignment(-ious)
    good = ious[rows, cols] >= threshold
    tp = int(good.sum())
    matched = float(ious[rows, cols][good].mean()) if tp else float("nan")
    return InstanceScores(tp, n_pred - tp, n_gt - tp, matched)


# ---------------------------------------------------------------------------------------
# Whole evaluation
# ---------------------------------------------------------------------------------------

DEFAULT_AMG = dict(
    points_per_side=32,
    points_per_batch=128,
    pred_iou_thresh=0.8,
    stability_score_thresh=0.9,
    box_nms_thresh=0.7,
)


def evaluate_model(
    model,
    samples: Iterable[Any],
    amg: dict[str, Any] | None = None,
    whole_image: bool = True,
    compiled: bool = True,
    threshold: float = 0.5,
    progress: Callable[[int], Any] | None = None,
    mirror_average: bool = False,
) -> dict[str, Any]:
    """Mean IoU from one point and from a box, and whole-image instance F1.

    Args:
        model: a Sam.
        samples: (image, labels) pairs, or synthetic samples (grouped by
            :func:`sample_group`).
        amg: keyword arguments of :class:`SamAutomaticMaskGenerator` (default
            :data:`DEFAULT_AMG`).
        whole_image: also run the automatic mask generator (the slow part).
        compiled: use :class:`CompiledPredictor` (without ``mirror_average``; on CPU the
            averaging predictor's encoder runs as the same compiled stage graphs).
        threshold: IoU for a whole-image match.
        progress: called with the number of images done.
        mirror_average: clicks, boxes and whole-image mode through a
            :class:`~napari_sam_ms.mirror_average.MirrorAveragedPredictor` (as the widgets,
            the pipeline and the command line run the embedded model).

    Returns:
        ``point_miou``, ``box_miou``, ``otsu_box_miou`` (the baseline of
        :func:`otsu_box_mask`; means over all objects), ``f1``, ``precision``, ``recall``
        (from TP/FP/FN summed over images), ``n_images``, ``n_objects``, ``seconds``, and
        ``by_group``: per :func:`sample_group` (and ``all``), ``point_miou``, ``box_miou``,
        ``otsu_box_miou``, ``n_images``, ``n_objects``.
    """
    predictor = _predictor(model, compiled, mirror_average)
    generator = None
    if whole_image:
        from ..automatic_mask_generator import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(model, **{**DEFAULT_AMG, **(amg or {})})
        generator.predictor = predictor
    start = time.perf_counter()
    point, box, tp, fp, fn, n_images = [], [], 0, 0, 0, 0
    otsu: list[np.ndarray] = []
    groups: list[str] = []
    for item in samples:
        image, labels = _pair(item)
        groups.append(sample_group(item))
        point.append(prompt_ious(predictor, image, labels, "point"))
        box.append(prompt_ious(predictor, image, labels, "box", set_image=False))
        otsu.append(otsu_box_ious(image, labels))
        if generator is not None:
            pred = masks_to_labels(generator.generate(image), shape=labels.shape)
            scores = match_instances(labels, pred, threshold)
            tp, fp, fn = tp + scores.tp, fp + scores.fp, fn + scores.fn
        n_images += 1
        if progress is not None:
            progress(n_images)
    result: dict[str, Any] = _prompt_figures(point, box, n_images, time.perf_counter() - start)
    result["otsu_box_miou"] = _mean(otsu)
    result["by_group"] = _group_figures(groups, point, box, otsu)
    if generator is not None:
        pooled = InstanceScores(tp, fp, fn, float("nan"))
        result.update(f1=pooled.f1, precision=pooled.precision, recall=pooled.recall)
    return result


def _predictor(model, compiled: bool, mirror_average: bool) -> SamPredictor:
    """The predictor :func:`evaluate_model` prompts through."""
    if mirror_average:
        from ..mirror_average import MirrorAveragedPredictor

        return MirrorAveragedPredictor(model)
    return CompiledPredictor(model) if compiled else SamPredictor(model)


def _group_figures(
    groups: list[str], point: list[np.ndarray], box: list[np.ndarray], otsu: list[np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per-group point, box and Otsu-baseline mIoU (and ``all`` when there are groups)."""
    names = sorted(set(groups)) + (["all"] if set(groups) - {"all"} else [])
    out = {}
    for name in names:
        pick = [i for i, g in enumerate(groups) if name in (g, "all")]
        out[name] = {
            "point_miou": _mean([point[i] for i in pick]),
            "box_miou": _mean([box[i] for i in pick]),
            "otsu_box_miou": _mean([otsu[i] for i in pick]),
            "n_images": len(pick),
            "n_objects": int(sum(len(box[i]) for i in pick)),
        }
    return out


def _prompt_figures(
    point: list[np.ndarray], box: list[np.ndarray], n_images: int, seconds: float
) -> dict[str, float]:
    """Mean point and box IoU over all objects (nan without any), and the counts."""
    point_all = np.concatenate(point) if point else np.zeros(0)
    box_all = np.concatenate(box) if box else np.zeros(0)
    return {
        "point_miou": float(point_all.mean()) if point_all.size else float("nan"),
        "box_miou": float(box_all.mean()) if box_all.size else float("nan"),
        "n_images": n_images,
        "n_objects": int(point_all.size),
        "seconds": seconds,
    }


__all__ = [
    "DEFAULT_AMG",
    "CompiledPredictor",
    "InstanceScores",
    "baseline_table",
    "evaluate_model",
    "interior_point",
    "iou",
    "iou_matrix",
    "match_instances",
    "object_ids",
    "otsu_baseline",
    "otsu_box_ious",
    "otsu_box_mask",
    "prompt_ious",
    "sample_group",
]
