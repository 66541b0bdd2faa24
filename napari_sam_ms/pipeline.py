"""The model card's ``pipeline("segment_anything", ...)`` API on top of Meta-style classes.

::

    from napari_sam_ms import pipeline

    sam = pipeline("segment_anything", model="sam_vit_b")      # or a checkpoint=, or a Sam
    sam.set_image("truck.jpg")                                 # or an RGB array
    out = sam({"points": [[500, 375]], "labels": [1]}, multimask_output=True)
    out["masks"], out["iou_predictions"], out["low_res_masks"]
    records = sam({"image": "dog.jpg"}, seg_image=True, pred_iou_thresh=0.86)

Prompt shapes (coordinates are (x, y) pixels of the original image, boxes x0, y0, x1, y1):

- one object: ``points`` (N, 2) with ``labels`` (N,), and/or ``boxes`` (4,) -> masks (C, H, W);
- B objects: ``points`` (B, N, 2) with ``labels`` (B, N), and/or ``boxes`` (B, 4) -> masks
  (B, C, H, W). With both, box ``i`` is paired with points ``i``; a one-object prompt next
  to a batched one counts as a batch of one (points (N, 2) with boxes (1, 4) -> (1, C, H, W)).

A box and points given together both count (Meta's semantics). Labels are 1 (foreground) and
0 (background). Whole-image mode (``seg_image=True``) runs its own
:class:`SamAutomaticMaskGenerator` built for that call, so its settings never carry over to the
next call and the embedding of the image given to :meth:`SamPipeline.set_image` is kept.

Tiles (off unless asked): ``pipeline(..., tile_shape=(h, w), halo=(h, w), zoom=z)`` answers
prompts at the image's own resolution from tiles with a halo
(:class:`~napari_sam_ms.tiled.TiledPredictor`); prompts and outputs stay in full-image
pixels, and the image may be a dask or zarr array or a multiscale list (level 0 is used, read
tile by tile; a multiscale list turns tiles on by itself). Prompt outputs then also hold
``crop_box`` (y0, x0, y1, x1 of the region the masks come from) and ``note``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from . import amg_settings, runtime
from .automatic_mask_generator import SamAutomaticMaskGenerator
from .embedding_cache import EmbeddingCache
from .loader import LoadedModel, describe_model, embedding_id, load_model, make_predictor
from .modeling import Sam
from .tiled import TiledPredictor, paste_all
from .utils.image import to_rgb_uint8
from .utils.io import read_image

TASKS = ("segment_anything",)
PROMPT_KEYS = ("points", "labels", "boxes", "mask_input")

# Meta's SamAutomaticMaskGenerator defaults (the model card's whole-image parameters), from
# the settings table (napari_sam_ms.amg_settings).
AMG_DEFAULTS: dict[str, Any] = dict(amg_settings.META_DEFAULTS)


def pipeline(
    task: str = "segment_anything",
    model: str | Sam | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    device_id: int | None = None,
    tile_shape: tuple[int, int] | int | None = None,
    halo: tuple[int, int] | int | None = None,
    zoom: int | None = None,
) -> SamPipeline:
    """Create the segment-anything pipeline of the model card.

    Args:
        task: must be ``"segment_anything"``.
        model: ``sam_vit_b``/``sam_vit_l``/``sam_vit_h`` (or ``vit_b``, ``default`` ...),
            ``sam_ms_micro`` (the embedded default model), or a
            built :class:`Sam`. ``"tiny"`` is a small random-weight model for tests. None:
            the size stored in ``checkpoint``; without a checkpoint ``sam_vit_b`` when its
            official weights are on this machine, else the embedded ``sam_ms_micro`` model
            (trained on synthetic microscopy; works offline).
        checkpoint: a ``.ckpt`` (or Meta ``.pth``) for the model. When None, the official
            weights are fetched once and reused (see :mod:`napari_sam_ms.weights`);
            ``"tiny"`` without a checkpoint has random weights.
        device: ``CPU``, ``GPU`` or ``Ascend`` (see :func:`napari_sam_ms.runtime.configure`);
            None keeps the configured device (default CPU).
        device_id: card index for GPU/Ascend.
        tile_shape, halo, zoom: answer prompts and whole-image runs from tiles at native
            resolution (any of them turns tiles on; see :class:`SamPipeline`).

    Returns:
        A :class:`SamPipeline` for the model :func:`napari_sam_ms.loader.load_model` chose.

    Raises:
        napari_sam_ms.loader.ModelLoadError: the model cannot be loaded (a ValueError).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: this package provides {TASKS[0]!r} only")
    if device is not None or device_id is not None:
        runtime.configure(device=device, device_id=device_id)
    if isinstance(model, Sam):
        if checkpoint is not None:
            raise ValueError("pass either a built Sam model or a checkpoint, not both")
        return SamPipeline(model, tile_shape=tile_shape, halo=halo, zoom=zoom)
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a model name or a Sam instance, got {type(model).__name__}")
    return SamPipeline(load_model(model, checkpoint), tile_shape=tile_shape, halo=halo, zoom=zoom)


class SamPipeline:
    """Interactive prompts on one embedded image, plus whole-image segmentation.

    Args:
        model: the loader's record (:func:`napari_sam_ms.loader.load_model`), or a built
            SAM model (Meta's whole-image defaults).
        whole_image_defaults: whole-image parameters that replace the model's defaults;
            parameters given in a call still win.
        mirror_average: for a built model: predictions are the mean over the image and its
            mirror images (:class:`~napari_sam_ms.mirror_average.MirrorAveragedPredictor`),
            for prompts and, unless a call says otherwise, in whole-image mode. A record
            says this itself (on for the embedded micro model).
        tile_shape: inner tile size (h, w) (an int: square); None with tiles on: the model
            input at ``zoom`` minus twice the halo.
        halo: margin around each tile; None with tiles on: 1/8 of the zoomed model input.
        zoom: 1, 2 or 4: tiles are upsampled this much before embedding (small objects).
        cache: the tiles' embedding cache (default: memory and the disk cache folder; random
            weights stay in memory).
    """

    def __init__(
        self,
        model: Sam | LoadedModel,
        whole_image_defaults: Mapping[str, Any] | None = None,
        mirror_average: bool = False,
        tile_shape: tuple[int, int] | int | None = None,
        halo: tuple[int, int] | int | None = None,
        zoom: int | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if not isinstance(model, LoadedModel):
            model = describe_model(model, mirror_average=mirror_average)
        self.loaded = model
        self.model = model.model
        self.predictor = make_predictor(model)
        self.whole_image_defaults = {**model.whole_image_defaults, **(whole_image_defaults or {})}
        self.tiling: dict[str, Any] | None = None
        if (tile_shape, halo, zoom) != (None, None, None):
            self.tiling = {"tile_shape": tile_shape, "halo": halo, "zoom": zoom or 1}
        self._cache = cache
        self.tiled: TiledPredictor | None = None
        if self.tiling is not None:
            self.tiled = self._tiled_predictor(self.predictor)

    def _tiled_predictor(self, predictor: Any) -> TiledPredictor:
        """A tiled predictor over ``predictor`` with this pipeline's tiling and cache."""
        if self._cache is None:
            self._cache = EmbeddingCache(cache_dir=False if self.loaded.random_weights else None)
        model_id = "" if self.loaded.random_weights else embedding_id(self.loaded, predictor)
        options = self.tiling or {"tile_shape": None, "halo": None, "zoom": 1}
        return TiledPredictor(predictor, **options, cache=self._cache, model_id=model_id)

    # ----------------------------------------------------------------- image
    def set_image(self, image: np.ndarray | str | os.PathLike, image_format: str = "RGB") -> None:
        """Embed the image that later prompt calls refer to.

        Args:
            image: (H, W, 3) RGB array, or a file path (read by
                :func:`napari_sam_ms.utils.io.read_image`). Grayscale, RGBA, uint16 and float
                images are converted by :func:`napari_sam_ms.utils.image.to_rgb_uint8`
                (min..max scaled to 0..255, NaN as the lowest value, alpha dropped).
            image_format: ``RGB`` or ``BGR`` for 3-channel arrays (``cv2.imread`` gives BGR).

        With tiles, nothing is embedded yet (each prompt embeds the tile it needs), and the
        image may also be a dask or zarr array or a multiscale list (which turns tiles on).
        """
        if self.tiling is None:  # a pyramid turns tiles on (level 0)
            self.tiled = self._tiled_predictor(self.predictor) if _is_pyramid(image) else None
        if self.tiled is None:
            return self.predictor.set_image(load_image(image), image_format=image_format)
        if image_format != "RGB":
            raise ValueError("tiled images are read as RGB: convert BGR images first")
        self.predictor.reset_image()
        self.tiled.set_image(read_image(image) if isinstance(image, (str, os.PathLike)) else image)

    @property
    def is_image_set(self) -> bool:
        """Whether :meth:`set_image` has been called."""
        if self.tiled is not None:
            return self.tiled.is_image_set
        return bool(self.predictor.is_image_set)

    def reset_image(self) -> None:
        """Forget the embedded image."""
        if self.tiled is not None:
            self.tiled.reset_image()
        self.predictor.reset_image()

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        inputs: Mapping[str, Any],
        multimask_output: bool = True,
        seg_image: bool = False,
        return_logits: bool = False,
        progress: Callable[..., Any] | None = None,
        **amg_params: Any,
    ) -> dict[str, np.ndarray] | list[dict[str, Any]]:
        """Segment from prompts, or the whole image with ``seg_image=True``.

        Args:
            inputs: prompts ``{"points", "labels", "boxes"}`` (optionally ``"mask_input"``, the
                low-res logits of an earlier call) on the image of :meth:`set_image`; or
                ``{"image": array_or_path}`` with ``seg_image=True``.
            multimask_output: three candidate masks per object (best for one ambiguous click)
                instead of one.
            seg_image: segment everything in ``inputs["image"]``.
            return_logits: prompt mode: return mask logits instead of booleans.
            progress: whole-image mode: callback handed to the generator's ``generate``.
            amg_params: whole-image mode only: any of :data:`AMG_DEFAULTS` (Meta's
                SamAutomaticMaskGenerator arguments) for this call; the others are Meta's
                defaults (for the embedded micro model: its own filters, see
                ``whole_image_defaults``).

        Returns:
            Prompt mode: ``{"masks", "iou_predictions", "low_res_masks"}`` as numpy arrays,
            shaped (C, H, W), (C,), (C, h, w) for one object and (B, C, H, W), (B, C),
            (B, C, h, w) for B objects. Whole-image mode: a list of Meta's mask records.
        """
        if not isinstance(inputs, Mapping):
            raise TypeError(
                "inputs must be a dict: {'points': ..., 'labels': ..., 'boxes': ...} for prompts "
                f"or {{'image': ...}} with seg_image=True, got {type(inputs).__name__}"
            )
        if seg_image:
            return self.segment_image(inputs, progress=progress, **amg_params)
        if amg_params or progress is not None:
            names = sorted(amg_params) + (["progress"] if progress is not None else [])
            raise TypeError(
                f"{', '.join(names)}: whole-image parameters need seg_image=True; prompt calls "
                "take multimask_output and return_logits"
            )
        return self.predict(inputs, multimask_output=multimask_output, return_logits=return_logits)

    def predict(
        self,
        prompts: Mapping[str, Any],
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> dict[str, np.ndarray]:
        """Prompt mode of :meth:`__call__`."""
        if "image" in prompts:
            raise ValueError(
                "'image' in a prompt call: embed it first with set_image(image), or pass "
                "seg_image=True to segment the whole image"
            )
        unknown = sorted(set(prompts) - set(PROMPT_KEYS))
        if unknown:
            raise ValueError(f"unknown prompt keys {unknown}; use {list(PROMPT_KEYS)}")
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(image) before prompting")
        prompt = _parse_prompts(prompts)
        if self.tiled is not None:
            return self._predict_tiled(prompt, multimask_output, return_logits)
        predict = self.predictor.predict_batch if prompt.batched else self.predictor.predict
        masks, iou, low_res = predict(
            prompt.points,
            prompt.labels,
            prompt.boxes,
            prompt.mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return {"masks": masks, "iou_predictions": iou, "low_res_masks": low_res}

    def _predict_tiled(self, prompt: _Prompt, multimask: bool, logits: bool) -> dict[str, Any]:
        """Prompt mode with tiles: one tile (or window) per object, full-image masks."""
        if logits or prompt.mask_input is not None:
            raise ValueError("return_logits and mask_input are not available with tiles")
        one = (lambda a: a) if prompt.batched else (lambda a: None if a is None else a[None])
        results = self.tiled.predict_batch(
            one(prompt.points), one(prompt.labels), one(prompt.boxes), multimask
        )
        out = {
            "masks": paste_all(results, self.tiled.source.shape),
            "iou_predictions": np.stack([r.scores for r in results]),
            "low_res_masks": np.stack([r.low_res_logits for r in results]),
            "crop_box": np.array([r.box for r in results]),
            "note": [r.note for r in results],
        }
        return out if prompt.batched else {k: v[0] for k, v in out.items()}

    def segment_image(
        self,
        inputs: Mapping[str, Any],
        progress: Callable[..., Any] | None = None,
        **amg_params: Any,
    ) -> list[dict[str, Any]]:
        """Whole-image mode of :meth:`__call__`; leaves the interactive embedding alone."""
        others = sorted(set(inputs) - {"image"})
        if "image" not in inputs or others:
            raise ValueError(
                "seg_image=True takes {'image': array_or_path} only"
                + (f" (got keys {sorted(inputs)})" if inputs else "")
            )
        params = {**self.whole_image_defaults, **amg_params}
        image = inputs["image"]
        if self.tiling is None and not _is_pyramid(image):
            generator = make_generator(self.model, **params)
            image = to_rgb_uint8(load_image(image))
            return generator.generate(image, **({} if progress is None else {"progress": progress}))
        # tiles: the generator embeds through a tiled predictor of its own (the interactive
        # one keeps its tile), sharing this pipeline's cache
        tiled = self._tiled_predictor(make_predictor(self.loaded))
        tiled.invert = bool(params.get("invert", False))  # the generator's model input
        tiled.set_image(read_image(image) if isinstance(image, (str, os.PathLike)) else image)
        amg_settings.check_names(params)
        options = {"tile_shape": tiled.tile_shape, "halo": tiled.halo, "zoom": tiled.zoom}
        generator = SamAutomaticMaskGenerator(self.model, **{**params, **options})
        extra = {} if progress is None else {"progress": progress}
        return generator.generate(tiled.source, embed=tiled.embed_tile, **extra)


# --------------------------------------------------------------------- helpers
def load_image(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    """An array as given, or the array read from a path."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Mapping):
        raise TypeError("set_image takes an array or a path, not a dict")
    return np.asarray(image)


def amg_parameter_names() -> list[str]:
    """The keyword arguments of :class:`SamAutomaticMaskGenerator` (besides the model)."""
    return amg_settings.names()


def make_generator(model: Sam, **amg_params: Any) -> SamAutomaticMaskGenerator:
    """A fresh :class:`SamAutomaticMaskGenerator` with Meta's defaults and these overrides.

    Values are passed as given (0 means 0). Unknown names raise a TypeError listing the valid
    ones.
    """
    amg_settings.check_names(amg_params)
    return SamAutomaticMaskGenerator(model, **amg_params)


def _is_pyramid(image: Any) -> bool:
    """A napari-style multiscale list: arrays, level 0 first."""
    return isinstance(image, (list, tuple)) and bool(image) and hasattr(image[0], "shape")


class _Prompt(NamedTuple):
    """Prompts validated for shape and normalised to one object or a batch."""

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None
    batched: bool


def _as_array(value: Any, name: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise ValueError(f"{name} must be a regular array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got {arr.dtype} (ragged lists are not arrays)")
    return arr


def _check_points(points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 2) or (B, N, 2) with matching 0/1 labels, or a ValueError saying why."""
    if points.ndim == 1 and points.shape[0] == 2:  # a single (x, y)
        points = points[None]
    if labels.ndim == 0:
        labels = labels[None]
    if points.ndim not in (2, 3) or points.shape[-1] != 2:
        raise ValueError(
            f"points must have shape (N, 2) for one object or (B, N, 2) for B objects, "
            f"as (x, y) pixels; got {points.shape}"
        )
    if labels.shape != points.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} does not match points {points.shape}: give one "
            f"label per point, shaped {points.shape[:-1]}"
        )
    if points.size == 0:
        raise ValueError(f"points is empty (shape {points.shape}): leave it out instead")
    if not np.isfinite(points.astype(float)).all():
        raise ValueError("points contain NaN or infinite values")
    if np.any((labels != 0) & (labels != 1)):
        bad = sorted({v.item() for v in np.unique(labels)} - {0, 1})
        raise ValueError(
            f"labels must be 1 (foreground) or 0 (background), got {bad}; background is 0, not 2"
        )
    return points, labels


def _parse_prompts(prompts: Mapping[str, Any]) -> _Prompt:
    points = _as_array(prompts.get("points"), "points")
    labels = _as_array(prompts.get("labels"), "labels")
    boxes = _as_array(prompts.get("boxes"), "boxes")
    mask_input = _as_array(prompts.get("mask_input"), "mask_input")
    if points is None and labels is None and boxes is None and mask_input is None:
        raise ValueError("no prompt given: pass 'points' with 'labels', and/or 'boxes'")
    if (points is None) != (labels is None):
        raise ValueError(
            "'points' and 'labels' go together: one label per point, 1 = foreground, 0 = background"
        )
    if points is not None:
        points, labels = _check_points(points, labels)
    if boxes is not None and (boxes.ndim not in (1, 2) or boxes.shape[-1] != 4):
        raise ValueError(
            f"boxes must have shape (4,) for one object or (B, 4) for B objects, as "
            f"x0, y0, x1, y1; got {boxes.shape}"
        )
    if boxes is not None and boxes.size == 0:
        raise ValueError(f"boxes is empty (shape {boxes.shape}): leave it out instead")
    batched = (points is not None and points.ndim == 3) or (boxes is not None and boxes.ndim == 2)
    if mask_input is not None:
        batched = batched or mask_input.ndim == 4
    if not batched:
        return _Prompt(points, labels, boxes, mask_input, batched=False)
    # B objects: bring every prompt to a batch and check that the counts agree.
    if points is not None and points.ndim == 2:
        points, labels = points[None], labels[None]
    if boxes is not None and boxes.ndim == 1:
        boxes = boxes[None]
    if mask_input is not None and mask_input.ndim in (2, 3):
        mask_input = mask_input.reshape((1, 1) + mask_input.shape[-2:])
    counts = {
        name: len(arr)
        for name, arr in (("points", points), ("boxes", boxes), ("mask_input", mask_input))
        if arr is not None
    }
    if len(set(counts.values())) > 1:
        raise ValueError(
            "points and boxes must describe the same number of objects: box i is paired with "
            f"points i, so give points as (B, N, 2) for B boxes; got {counts}"
        )
    return _Prompt(points, labels, boxes, mask_input, batched=True)


__all__ = ["AMG_DEFAULTS", "SamPipeline", "amg_parameter_names", "make_generator", "pipeline"]
