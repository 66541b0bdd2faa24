"""Whole-image segmentation: prompt SAM with a grid of points and keep the good, distinct
masks (mirrors ``segment_anything/automatic_mask_generator.py``).

:meth:`SamAutomaticMaskGenerator.generate` runs three stages: ``collect`` (the model: candidate
masks per crop), then :func:`~napari_sam_ms.amg_refine.filter_candidates` (scores, NMS,
overlap, small regions) and :func:`~napari_sam_ms.amg_refine.mask_records` (Meta's records),
which re-filtering runs on cached candidates (:func:`collect_candidates`).

Progress: ``progress(done, total)`` is called before the first batch of points (``done=0``)
and after every batch, counting over all crops (or tiles); returning ``False`` raises
:class:`GenerationCancelled` (a :class:`napari_sam_ms.progress.Cancelled`).

Tiles (``tile_shape``, off by default): the plane is read lazily, each tile's outer area is
embedded at its own resolution (or ``zoom`` times larger) and its candidates kept as crops in
plane pixels; :mod:`napari_sam_ms.amg_tiles` has the rules that join the tiles. The three steps
of a tiled run are public (:meth:`~SamAutomaticMaskGenerator.tile_grid`,
:meth:`~SamAutomaticMaskGenerator.collect_tile`, :meth:`~SamAutomaticMaskGenerator.finish_tiled`)
so that tiles may be collected elsewhere (:mod:`napari_sam_ms.batch.plane_tasks`: Dask tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .amg_decode import decode_points
from .amg_refine import (
    FILTER_ARGS,
    Candidates,
    empty_mask_data,
    filter_candidates,
    filter_crop,
    mask_records,
    postprocess_small_regions,
)
from .amg_settings import (
    META_DEFAULTS,
    SETTINGS,
    check_float,
    check_int,
    check_tiling,
    help_text,
    names,
    point_grids_for,
)
from .amg_tiles import TileLayout, canvas_shape, check_canvas, tile_canvas
from .engine import long_job
from .mirror_average import MirrorAveragedPredictor
from .modeling import Sam
from .predictor import ImageEmbedding, SamPredictor
from .progress import Cancelled, ProgressCallback, StepCounter
from .utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .utils.image import invert_for_model, to_rgb_uint8
from .utils.plane_source import PlaneSource
from .utils.tiling import Tile, TileGrid, check_patch, model_patch

TileEmbedder = Callable[[Tile], ImageEmbedding]  # embed(tile): e.g. from a cache

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


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
        tile_shape: int | Sequence[int] | None = META_DEFAULTS["tile_shape"],
        halo: int | Sequence[int] | None = META_DEFAULTS["halo"],
        zoom: int = META_DEFAULTS["zoom"],
    ) -> None:
        self.crop_n_layers = check_int(crop_n_layers, "crop_n_layers", minimum=0)
        self.crop_n_points_downscale_factor = check_int(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", minimum=1
        )
        self.points_per_side = points_per_side
        self.point_grids = point_grids_for(
            points_per_side, point_grids, self.crop_n_layers, self.crop_n_points_downscale_factor
        )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {OUTPUT_MODES}")
        if output_mode == "coco_rle":
            coco_encode_rle({"size": [1, 1], "counts": [1]})  # fails now if pycocotools is missing
        self.output_mode = output_mode
        self.mirror_average = bool(mirror_average)
        self.invert = bool(invert)
        self.predictor = MirrorAveragedPredictor(model) if mirror_average else SamPredictor(model)
        self.points_per_batch = check_int(points_per_batch, "points_per_batch", minimum=1)
        self.pred_iou_thresh = check_float(pred_iou_thresh, "pred_iou_thresh")
        self.stability_score_thresh = check_float(stability_score_thresh, "stability_score_thresh")
        self.stability_score_offset = check_float(stability_score_offset, "stability_score_offset")
        self.box_nms_thresh = check_float(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_nms_thresh = check_float(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = check_float(crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0)
        check_float(min_mask_region_area, "min_mask_region_area", 0.0)
        self.min_mask_region_area = min_mask_region_area
        self.mask_overlap_thresh = check_float(mask_overlap_thresh, "mask_overlap_thresh", 0.0, 1.0)
        self.tile_shape, self.halo, self.zoom = check_tiling(
            tile_shape, halo, zoom, self.crop_n_layers, int(model.image_encoder.img_size)
        )
        check_patch(self.tile_shape, self.zoom, model_patch(model))  # tiles under one cell

    def filter_settings(self) -> dict[str, Any]:
        """This generator's filter-stage settings (the arguments of :func:`filter_candidates`)."""
        return {k: getattr(self, k) for k in FILTER_ARGS}

    # ------------------------------------------------------------------ stages
    def generate(
        self,
        image: Any,
        progress: ProgressCallback | None = None,
        embed: TileEmbedder | None = None,
    ) -> list[dict[str, Any]]:
        """Segment the whole image: :meth:`collect`, :func:`filter_candidates`,
        :func:`mask_records`.

        Args:
            image: (H, W, 3) uint8 RGB; other forms are converted as the predictor does. A
                :class:`~napari_sam_ms.utils.plane_source.PlaneSource` (or a dask/zarr plane
                or pyramid with tiles) is read region by region, never whole with tiles.
            progress: optional ``callback(done, total)`` in batches of points.
            embed: with tiles, ``embed(tile)`` gives each tile's embedding (e.g. cached);
                None: the generator embeds them.

        Returns:
            One record per mask, best first, as Meta's generator: ``segmentation`` (per
            ``output_mode``), ``area``, ``bbox`` (x, y, w, h), ``predicted_iou``,
            ``point_coords`` ([[x, y]]), ``stability_score`` and ``crop_box`` (x, y, w, h).
            With tiles, all in plane pixels; on planes over
            :data:`~napari_sam_ms.amg_tiles.FULL_SIZE_LIMIT` pixels ``segmentation`` is the
            mask cropped to its box and ``crop_box`` that crop
            (:func:`~napari_sam_ms.amg_tiles.paint_labels` paints either form).

        Raises:
            GenerationCancelled: the progress callback returned False.
        """
        return self._records(self._gather(image, progress, embed, prefilter=True))

    def _records(self, cands: Candidates) -> list[dict[str, Any]]:
        """The records of the candidates this generator's filters keep."""
        kept = filter_candidates(cands, **self.filter_settings())
        return mask_records(kept, self.output_mode, cands.shape)

    def collect(
        self,
        image: Any,
        progress: ProgressCallback | None = None,
        embed: TileEmbedder | None = None,
    ) -> Candidates:
        """Run the model on every crop (or tile) and keep the candidate masks.

        Only the per-mask filters (predicted IoU, stability) apply here, so the masks of
        candidates they drop are never computed; with both at 0 every candidate is kept.
        With ``invert`` the model sees ``255 - image`` (8-bit RGB); masks are in the same pixels.
        ``image`` and ``embed`` as :meth:`generate` takes them.
        """
        return self._gather(image, progress, embed, prefilter=False)

    def _gather(self, image: Any, progress, embed, prefilter: bool) -> Candidates:
        """:meth:`collect` (``prefilter``: each tile filtered as it comes, bounded memory) as
        one long job: its embeddings and batches compile on its path during a warm-up."""
        with long_job(self.predictor):
            if self.tile_shape is not None:
                return self._collect_tiled(image, progress, embed, prefilter)
            return self._collect_crops(image, progress, embed)

    def _collect_crops(self, image: Any, progress, embed) -> Candidates:
        """The candidates of every crop of a plane given whole (no tiles)."""
        if embed is not None:
            raise ValueError("embed is for tiles: give the generator a tile_shape")
        if isinstance(image, PlaneSource):
            h, w = image.shape
            image = image.model_input((0, 0, h, w), invert=self.invert)
        else:
            image = np.asarray(image)
            image = invert_for_model(image) if self.invert else to_rgb_uint8(image)
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        batches = [math.ceil(len(self.point_grids[i]) / self.points_per_batch) for i in layer_idxs]
        counter = _counter(progress, sum(batches))
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
        counter: StepCounter,
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
        data = self._decode_batch(points, points, im_size, self.predictor.original_size)
        data["boxes"] = batched_mask_to_box(data["masks"])
        # Drop masks cut by the crop border (unless it is the image border).
        data.filter(~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h]))
        data["rles"] = mask_to_rle(
            uncrop_masks(data["masks"], crop_box, orig_h, orig_w), compact=True
        )
        del data["masks"]
        return data

    def _decode_batch(
        self, points: np.ndarray, model_points: np.ndarray, model_size: tuple[int, ...],
        mask_size: tuple[int, ...], zoom: int | None = None,
    ) -> MaskData:  # fmt: skip
        """:func:`~napari_sam_ms.amg_decode.decode_points` with this generator's predictor
        and per-mask filters."""
        filters = (self.pred_iou_thresh, self.stability_score_thresh, self.stability_score_offset)
        return decode_points(self.predictor, points, model_points, model_size, mask_size,
                             filters, zoom)  # fmt: skip

    # ------------------------------------------------------------------ tiles
    def _collect_tiled(
        self,
        image: Any,
        progress: ProgressCallback | None,
        embed: TileEmbedder | None,
        prefilter: bool,
    ) -> Candidates:
        """Candidates of every tile, in plane pixels with crop RLEs; with ``prefilter`` each
        tile goes through :func:`filter_crop` as soon as it is collected."""
        source = image if isinstance(image, PlaneSource) else PlaneSource(image)
        grid = self.tile_grid(source.shape)
        layout = TileLayout.from_grid(grid, self.zoom)
        per_tile = math.ceil(len(self.point_grids[0]) / self.points_per_batch)
        counter = _counter(progress, per_tile * len(grid))
        counter.report()
        crops = [
            self.collect_tile(source, grid, t, layout, embed, prefilter, counter)
            for t in range(len(grid))
        ]
        return self._tiled_candidates(layout, crops)

    def tile_grid(self, shape: Sequence[int]) -> TileGrid:
        """The tiles this generator cuts a plane of ``shape`` into (it needs ``tile_shape``)."""
        if self.tile_shape is None:
            raise ValueError("this generator has no tile_shape: it does not tile")
        return TileGrid(shape, self.tile_shape, self.halo)

    def collect_tile(
        self,
        source: PlaneSource,
        grid: TileGrid,
        index: int,
        layout: TileLayout | None = None,
        embed: TileEmbedder | None = None,
        prefilter: bool = True,
        counter: StepCounter | None = None,
    ) -> MaskData:
        """Candidates of tile ``index`` of ``grid`` (:meth:`tile_grid`): boxes and points in
        plane pixels, masks as RLEs over the tile's outer area; with ``prefilter`` only those
        passing the tile's own filters (:func:`filter_crop`, which the finish applies again).

        ``layout``: ``TileLayout.from_grid(grid, zoom)`` when the caller has it; ``counter``
        counts batches of points.
        """
        layout = TileLayout.from_grid(grid, self.zoom) if layout is None else layout
        counter = _counter(None, 0) if counter is None else counter
        data = self._collect_tile(source, grid.tiles[index], index, counter, embed)
        if not prefilter:
            return data
        keep = (self.pred_iou_thresh, self.stability_score_thresh, self.box_nms_thresh)
        return filter_crop(data, *keep, layout)

    def finish_tiled(self, shape: Sequence[int], crops: Sequence[MaskData]) -> list[dict[str, Any]]:
        """The records of a plane of ``shape`` from its tiles' :meth:`collect_tile` results
        (in tile order): joined across tiles, filtered, as :meth:`generate` returns them."""
        layout = TileLayout.from_grid(self.tile_grid(shape), self.zoom)
        if len(crops) != len(layout):
            raise ValueError(f"{len(crops)} tiles' candidates for a grid of {len(layout)} tiles")
        return self._records(self._tiled_candidates(layout, list(crops)))

    def _tiled_candidates(self, layout: TileLayout, crops: list[MaskData]) -> Candidates:
        run = {k: getattr(self, k) for k in RUN_ARGS}
        boxes = [[int(v) for v in box] for box in layout.outer]
        return Candidates(layout.plane_shape, boxes, crops, run, tiles=layout)

    def _collect_tile(
        self,
        source: PlaneSource,
        tile: Tile,
        index: int,
        counter: StepCounter,
        embed: TileEmbedder | None,
    ) -> MaskData:
        """Candidates of one tile's outer area at native resolution: boxes and points in
        plane pixels, masks as RLEs over the outer area."""
        oy0, ox0, oy1, ox1 = tile.outer
        native, crop_box = (oy1 - oy0, ox1 - ox0), [ox0, oy0, ox1, oy1]
        canvas = canvas_shape(self.tile_shape, self.halo, self.zoom)
        if embed is None:
            rgb = source.model_input(tile.outer, self.zoom, self.invert)
            self.predictor.set_image(tile_canvas(rgb, canvas, self.predictor.model))
        else:
            self.predictor.set_embedding(check_canvas(embed(tile), canvas))
        points = self.point_grids[0] * np.array(native[::-1], np.float64)  # (x, y) in the tile
        data = empty_mask_data()
        try:
            for (batch,) in batch_iterator(self.points_per_batch, points):
                part = self._decode_batch(batch, batch * self.zoom, canvas, native, self.zoom)
                part["boxes"] = batched_mask_to_box(part["masks"])
                part["rles"] = mask_to_rle(part["masks"], compact=True)
                del part["masks"]
                data.cat(part)
                counter.step()
        finally:
            self.predictor.reset_image()
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(data["rles"]), 1))
        data["tile_ids"] = np.full(len(data["rles"]), index, np.int64)
        return data

    postprocess_small_regions = staticmethod(postprocess_small_regions)


# The Args section lists every setting with the table's help text.
SamAutomaticMaskGenerator.__doc__ = (SamAutomaticMaskGenerator.__doc__ or "").rstrip() + "".join(
    f"\n        {name}: {help_text(name)}" for name in SETTINGS
)

# Settings a run is made with (kept with its candidates).
RUN_ARGS = tuple(n for n in names("run") if n != "point_grids")


def collect_candidates(
    model: Sam,
    image: Any,
    progress: ProgressCallback | None = None,
    embed: TileEmbedder | None = None,
    **run_settings: Any,
) -> Candidates:
    """Every candidate mask of one image, for re-filtering (:mod:`napari_sam_ms.amg_refine`).

    Args:
        model: the SAM model.
        image: as :meth:`SamAutomaticMaskGenerator.generate` takes it.
        progress: ``callback(done, total)``; returning False raises GenerationCancelled.
        embed: with ``tile_shape``, the tiles' embeddings (see ``generate``).
        run_settings: run-stage settings (:data:`RUN_ARGS`, tiles included); the per-mask
            filters are open.
    """
    wrong = sorted(set(run_settings) - set(RUN_ARGS))
    if wrong:
        raise ValueError(f"not run settings: {', '.join(wrong)}; use {RUN_ARGS}")
    gen = SamAutomaticMaskGenerator(
        model, **run_settings, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    return gen.collect(image, progress, embed)


def _counter(callback: ProgressCallback | None, total: int) -> StepCounter:
    """Counts batches of points; ``callback`` returning False raises GenerationCancelled."""
    return StepCounter(callback, total, GenerationCancelled, "whole-image segmentation", "batches")


__all__ = [
    "GenerationCancelled",
    "OUTPUT_MODES",
    "RUN_ARGS",
    "SamAutomaticMaskGenerator",
    "TileEmbedder",
    "collect_candidates",
]
