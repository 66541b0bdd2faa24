"""Propagate one object through the slices of a stack (a z-stack or a time-lapse axis).

::

    from napari_sam_ms.propagate import propagate

    obj = propagate(volume, z=20, points=[[130, 88]], labels=[1])   # bool, volume's shape
    obj = propagate(volume, z=20, mask=committed_2d_mask)            # from a committed mask
    obj = propagate(volume, mask={4: mask_a, 31: mask_b})            # gaps filled between

The object on slice ``z`` (from a click/box, or a committed mask) prompts the next slice in
both directions, each slice from the one before it (:mod:`napari_sam_ms.volumes.slice_prompts`:
enlarged box, inner and outer points and/or the previous low-res logits). A direction stops
at the stack's end, when the new mask's IoU with the previous one is below ``iou_stop``, or
when the object vanishes (fewer than ``min_area`` pixels); the slice that stopped it stays
empty. Between two annotated slices both ends propagate across the whole gap and each slice
keeps the mask with the higher predicted IoU.

Slice embeddings are computed once per slice and kept in an
:class:`~napari_sam_ms.embedding_cache.EmbeddingCache` as parts ``(z,)`` of kind ``slices``
(shared with the widgets when they pass their cache and stack id; memory only if no cache is
given). All slices are converted to 8-bit RGB with one contrast range for the whole stack.
The model is chosen as :func:`napari_sam_ms.pipeline` does (:func:`loader.load_model`).
Cancelling raises :class:`PropagationCancelled`, whose ``result`` holds the slices done.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .embedding_cache import EmbeddingCache
from .engine import long_job
from .loader import LoadedModel, Predictor, embedding_id, load_model, make_predictor
from .progress import Cancelled, ProgressCallback
from .tiled import slice_tiles
from .tiled_slices import TiledSlices, check_tiled_kind, use_tiles
from .utils.image import to_rgb_uint8
from .utils.stacks import plane_layout, stack_limits
from .volumes.slice_prompts import BOX_MARGIN, check_kind, mask_iou, prompt_from_mask
from .volumes.stack_key import stack_id

# Chosen by measurement with the embedded model: on static synthetic ellipsoids box 0.868 vs
# points+mask 0.880 mean 3D IoU; on larger nuclei and on moving blobs box is far ahead (time
# frames kept 26/26 vs 10/26, tests/test_timelapse.py): the box is the robust default.
DEFAULT_PROMPT = "box"
IOU_STOP = 0.5  # a direction stops when consecutive slices' masks overlap less than this
MIN_AREA = 10  # pixels: a smaller mask means the object has vanished
KIND = "slices"  # the embedding cache's kind of parts


@dataclass(frozen=True)
class Propagation:
    """One object propagated through a stack.

    Attributes:
        mask: bool array of the volume's spatial shape (the object).
        slices: indices along the axis of the slices holding the object.
        scores: predicted IoU of each propagated slice (annotated slices: 1.0).
        stops: why each direction stopped (``below``, ``above``, ``gap a-b up``...): ``end``,
            ``met`` (the other annotated slice), ``iou z`` or ``vanished z``.
        complete: False when cancelled (``mask`` then holds the slices done so far).
        tiled: the slices were answered through tiles at their own resolution.
        notes: one line per slice answered from a coarser window (an object larger than a
            tile).
    """

    mask: np.ndarray
    slices: tuple[int, ...]
    scores: Mapping[int, float] = field(default_factory=dict)
    stops: Mapping[str, str] = field(default_factory=dict)
    complete: bool = True
    tiled: bool = False
    notes: tuple[str, ...] = ()


class PropagationCancelled(Cancelled):
    """Propagation stopped on request; ``result`` holds the slices done so far."""

    def __init__(self, result: Propagation) -> None:
        super().__init__(f"propagation cancelled after {len(result.slices)} slice(s)")
        self.result = result


def propagate(volume: Any, z: int | None = None, **options: Any) -> np.ndarray:
    """The object as a bool volume; arguments as :func:`propagate_object`."""
    return propagate_object(volume, z, **options).mask


def propagate_object(
    volume: Any,
    z: int | None = None,
    points: Sequence | np.ndarray | None = None,
    labels: Sequence | np.ndarray | None = None,
    box: Sequence | np.ndarray | None = None,
    mask: np.ndarray | Mapping[int, np.ndarray] | None = None,
    model: str | LoadedModel | None = None,
    checkpoint: str | os.PathLike | None = None,
    axis: int = 0,
    prompt: str = DEFAULT_PROMPT,
    iou_stop: float = IOU_STOP,
    min_area: int = MIN_AREA,
    margin: float = BOX_MARGIN,
    contrast_limits: tuple[float, float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    predictor: Predictor | None = None,
    cache: EmbeddingCache | None = None,
    image_id: str | None = None,
    tile_shape: tuple[int, int] | int | str | None = None,
    halo: tuple[int, int] | int | None = None,
    zoom: int = 1,
) -> Propagation:
    """Propagate one object from slice ``z`` (or several annotated slices) through a stack.

    Args:
        volume: (Z, Y, X) or (Z, Y, X, C) with C of 1, 3 or 4 (colour last).
        z: the prompted slice (index along ``axis``); with ``mask`` as a 2D array too.
        points: (N, 2) points (x, y) in the slice's pixels; labels (N,) 1/0 (default all 1).
        box: (4,) x0, y0, x1, y1 in the slice's pixels.
        mask: instead of a prompt, the committed object: (H, W) on slice ``z``, a dict
            {z: (H, W)} of annotated slices, or a volume of the spatial shape whose non-empty
            slices are the annotated ones.
        model, checkpoint: the model as :func:`napari_sam_ms.pipeline` takes it (default: the
            default model), or a :class:`~napari_sam_ms.loader.LoadedModel`.
        axis: the stack axis among the spatial axes; the other two are the slice plane.
        prompt: how a slice is prompted from the previous one
            (:data:`~napari_sam_ms.volumes.slice_prompts.PROMPT_KINDS`).
        iou_stop: stop a direction when consecutive slices' IoU falls below this.
        min_area: stop when the object has fewer pixels (it vanished).
        margin: box enlargement per side, as a fraction of the box's size.
        contrast_limits: one intensity range for all slices (default: the stack's min..max).
        progress: ``progress(done, total)`` per slice; returning False cancels.
        cancel: asked before each slice; True cancels.
        predictor: a predictor of ``model`` to use (e.g. the widget's).
        cache: embedding cache shared with other users (default: a private memory one).
        image_id: the stack's id in ``cache`` (default: a hash of its content and range).
        tile_shape, halo, zoom: answer each slice through tiles at its own resolution, as
            ``pipeline(...)`` takes them; ``tile_shape="auto"``: when a slice is larger than
            about 1.5 times the model's input (or ``zoom`` > 1). Not with ``mask`` prompts.

    Returns:
        A :class:`Propagation` (its ``mask`` has the volume's spatial shape).

    Raises:
        ValueError: a 2D image, ``z`` or ``axis`` outside the stack, no object (no prompt, an
            empty mask, nothing found at the prompt), a mask of another shape.
        PropagationCancelled: cancelled (``.result`` holds the slices done).
    """
    check_kind(prompt)
    stack, spatial, axis = _stack(np.asarray(volume), axis)
    seeds = _annotations(mask, z, spatial, axis, stack.shape[:3])
    if seeds is None:
        z = _check_z(z, stack.shape[0], axis)
        if points is None and box is None:
            raise ValueError("no object to propagate: give points (and labels), a box or a mask")
    loaded, predictor, model_id = _model(model, checkpoint, predictor)
    persist = bool(loaded is not None and not loaded.random_weights)
    if use_tiles(tile_shape, zoom, stack.shape[1:3], predictor):
        check_tiled_kind(prompt)
        tiles = slice_tiles(predictor, cache, model_id, persist, tile_shape, halo, zoom)
        predictor = TiledSlices(tiles)
    if contrast_limits is None:
        contrast_limits = stack_limits(stack)
    run = _Run(stack, contrast_limits, predictor, model_id, cache, image_id, progress, cancel)
    run.axis = axis
    run.options = {"prompt": prompt, "iou_stop": iou_stop, "min_area": min_area, "margin": margin}
    run.persist = persist
    starts = sorted(seeds) if seeds is not None else [z]
    run.total = starts[0] + stack.shape[0] - 1 - starts[-1]
    run.total += sum(2 * max(0, b - a - 1) for a, b in zip(starts, starts[1:], strict=False))
    with long_job(predictor):  # slice after slice: graphs compile on its path, once
        if seeds is None:
            run.total += 1
            seeds = {z: run.seed(z, points, labels, box)}
        for zi, (m, logits, score) in seeds.items():
            run.keep(zi, m, score, logits, fixed=True)
        run.chain(starts[0], -1, 0, "below")
        run.chain(starts[-1], 1, stack.shape[0] - 1, "above")
        for a, b in zip(starts, starts[1:], strict=False):
            if b - a > 1:
                run.chain(a, 1, b - 1, f"gap {a}-{b} up", met=True)
                run.chain(b, -1, a + 1, f"gap {a}-{b} down", met=True)
    run.tick(final=True)
    return run.result()


# ------------------------------------------------------------------ the run


class _Run:
    """One propagation: embeddings, per-slice predictions and the masks kept so far."""

    def __init__(self, stack, limits, predictor, model_id, cache, image_id, progress, cancel):
        self.stack, self.limits, self.predictor = stack, limits, predictor
        self.tiled = isinstance(predictor, TiledSlices)  # slices answered through tiles
        self.model_id = model_id
        if cache is None:  # (an empty cache is falsy: it has a length)
            cache = EmbeddingCache(cache_dir=False, max_items=max(16, stack.shape[0]))
        self.cache = cache
        self.image_id = image_id or stack_id(stack, limits)
        self.progress, self.cancel = progress, cancel
        self.options: dict[str, Any] = {}
        self.persist = False
        self.total = self.done = 0
        self.held: int | None = None  # the slice whose embedding the predictor holds
        self.best: dict[int, tuple[float, np.ndarray, np.ndarray | None, bool]] = {}
        self.stops: dict[str, str] = {}
        self.axis = 0

    # ---------------------------------------------------------- embeddings
    def embed(self, z: int) -> None:
        """Give the predictor slice ``z``'s embedding (cached per slice; through tiles,
        the slice: its tiles are embedded and cached as prompts need them)."""
        if self.held == z:
            return
        if self.tiled:
            self.predictor.set_slice(to_rgb_uint8(self.stack[z], self.limits))
            self.held = z
            return
        args = (self.image_id, self.model_id, KIND, (z,), (self.stack.shape[0],))
        emb = self.cache.get_part(*args)
        if emb is None:
            self.predictor.set_image(to_rgb_uint8(self.stack[z], self.limits))
            self.cache.put_part(*args, self.predictor.embedding, persist=self.persist)
        else:
            self.predictor.set_embedding(emb)
        self.held = z

    # ---------------------------------------------------------- predictions
    def seed(self, z: int, points, labels, box) -> tuple[np.ndarray, np.ndarray, float]:
        """The object on slice ``z`` from the user's prompt: (mask, logits, score)."""
        coords = None if points is None else np.asarray(points, np.float64).reshape(-1, 2)
        if coords is not None and labels is None:
            labels = np.ones(len(coords), np.int64)
        self.check_cancel()
        self.embed(z)
        one_click = box is None and coords is not None and len(coords) == 1
        masks, scores, logits = self.predictor.predict(
            coords, None if labels is None else np.asarray(labels), _box(box), None, one_click
        )
        i = int(np.argmax(scores))
        self.tick()
        if not masks[i].any():
            raise ValueError(f"no object found at the prompt on slice {z}: prompt another spot")
        return masks[i].astype(bool), logits[i : i + 1], float(scores[i])

    def chain(self, start: int, step: int, end: int, name: str, met: bool = False) -> None:
        """Propagate from ``start`` one slice at a time by ``step`` up to ``end`` inclusive."""
        if (end - start) * step <= 0:
            if not met:
                self.stops[name] = "end"
            return
        _, prev, logits, _ = self.best[start]
        o = self.options
        visited = 0
        reason = "met" if met else "end"
        for z in range(start + step, end + step, step):
            self.check_cancel()
            self.embed(z)
            kw = prompt_from_mask(prev, o["prompt"], logits, o["margin"])
            masks, scores, lows = self.predictor.predict(**kw)
            i = _pick(masks, scores, prev)
            new = masks[i].astype(bool)
            visited += 1
            self.tick()
            if np.count_nonzero(new) < o["min_area"]:
                reason = f"vanished {z}"
                break
            if mask_iou(new, prev) < o["iou_stop"]:
                reason = f"iou {z}"
                break
            self.keep(z, new, float(scores[i]), lows[i : i + 1])
            prev, logits = new, lows[i : i + 1]
        self.done += abs(end - start) - visited  # the slices skipped after a stop
        self.stops[name] = reason

    def keep(self, z, mask, score, logits, fixed: bool = False) -> None:
        """Keep ``mask`` on slice ``z`` unless a better one (or an annotation) is there."""
        have = self.best.get(z)
        if have is None or (not have[3] and (fixed or score > have[0])):
            self.best[z] = (score, mask, logits, fixed)

    # ---------------------------------------------------------- progress
    def tick(self, final: bool = False) -> None:
        """Count one slice done (``final``: all) and report it."""
        self.done = self.total if final else self.done + 1
        if self.progress is not None and self.progress(self.done, self.total) is False:
            if not final:
                raise PropagationCancelled(self.result(complete=False))

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise PropagationCancelled(self.result(complete=False))

    def result(self, complete: bool = True) -> Propagation:
        """The masks kept so far as a :class:`Propagation`."""
        out = np.zeros(self.stack.shape[:3], bool)
        for z, (_, m, _, _) in self.best.items():
            out[z] = m
        out = np.moveaxis(out, 0, self.axis)
        slices = tuple(sorted(z for z, v in self.best.items() if v[1].any()))
        scores = {z: round(float(self.best[z][0]), 4) for z in slices}
        notes = tuple(self.predictor.notes) if self.tiled else ()
        return Propagation(out, slices, scores, dict(self.stops), complete, self.tiled, notes)


# ------------------------------------------------------------------ inputs


def _stack(volume: np.ndarray, axis: int) -> tuple[np.ndarray, tuple[int, ...], int]:
    """(Z, H, W[, C]) view with the stack axis first, the spatial shape and the axis."""
    layout = plane_layout(volume.shape)
    if not layout.is_stack:
        raise ValueError(
            f"propagation needs a stack: got a 2D image of shape {volume.shape}; segment a "
            "single image with pipeline(...) or SamPredictor instead"
        )
    if len(layout.lead) > 1:
        raise ValueError(
            f"propagation takes a 3D stack (Z, Y, X) or (Z, Y, X, C), got shape "
            f"{volume.shape}: pass one stack of it, e.g. volume[t]"
        )
    spatial = (*layout.lead, *layout.plane)
    if not -3 <= int(axis) < 3:
        raise ValueError(f"axis {axis} is not an axis of a (Z, Y, X) stack: use 0, 1 or 2")
    axis = int(axis) % 3
    stack = np.moveaxis(volume, axis, 0)
    if min(stack.shape[1:3]) == 0 or stack.shape[0] == 0:
        raise ValueError(f"the stack is empty (shape {volume.shape})")
    return stack, spatial, axis


def _check_z(z: int | None, n: int, axis: int) -> int:
    if z is None:
        raise ValueError("say which slice holds the prompt: z=...")
    if not isinstance(z, (int, np.integer)) or not 0 <= int(z) < n:
        raise ValueError(f"slice z={z} is outside the stack: axis {axis} has slices 0..{n - 1}")
    return int(z)


def _annotations(mask, z, spatial, axis, shape) -> dict | None:
    """{z: (bool mask, no logits, score 1)} of the annotated slices; None without a mask."""
    if mask is None:
        return None
    n, h, w = shape
    if isinstance(mask, Mapping):
        items = {_check_z(k, n, axis): np.asarray(v) for k, v in mask.items()}
    else:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            if mask.shape != tuple(spatial):
                raise ValueError(
                    f"the mask volume has shape {mask.shape}, the image's is {tuple(spatial)}"
                )
            vol = np.moveaxis(mask, axis, 0)
            items = {i: vol[i] for i in range(n) if vol[i].any()}
            if not items:
                raise ValueError("no object to propagate: the mask volume is empty")
        else:
            items = {_check_z(z, n, axis): mask}
    if not items:
        raise ValueError("no object to propagate: no annotated slice given")
    out = {}
    for k, m in items.items():
        if m.shape != (h, w):
            raise ValueError(
                f"the mask of slice {k} has shape {m.shape}, but slices along axis {axis} are "
                f"{(h, w)}: give a mask of the slice's shape"
            )
        if not m.any():
            raise ValueError(f"no object to propagate: the mask on slice {k} is empty")
        out[k] = (m.astype(bool), None, 1.0)
    return out


def _model(model, checkpoint, predictor) -> tuple[LoadedModel | None, Predictor, str]:
    """(record, predictor, cache id of its embeddings) as the loader chooses them."""
    if predictor is not None:
        if isinstance(model, LoadedModel):
            if predictor.model is not model.model:
                raise ValueError("the predictor given is not one of the model given")
            return model, predictor, embedding_id(model, predictor)
        if model is not None or checkpoint is not None:
            raise ValueError("give a predictor with its LoadedModel, or a model choice, not both")
        return None, predictor, f"given:{uuid.uuid4().hex}"
    loaded = model if isinstance(model, LoadedModel) else load_model(model, checkpoint)
    predictor = make_predictor(loaded)
    return loaded, predictor, embedding_id(loaded, predictor)


def _box(box) -> np.ndarray | None:
    return None if box is None else np.asarray(box, np.float64).reshape(4)


def _pick(masks: np.ndarray, scores: np.ndarray, prev: np.ndarray) -> int:
    """The candidate most like the previous slice's mask (ties: the higher score)."""
    if len(masks) == 1:
        return 0
    overlap = [mask_iou(m.astype(bool), prev) for m in masks]
    return int(max(range(len(masks)), key=lambda i: (round(overlap[i], 3), scores[i])))


__all__ = [
    "DEFAULT_PROMPT",
    "IOU_STOP",
    "MIN_AREA",
    "Propagation",
    "PropagationCancelled",
    "propagate",
    "propagate_object",
]
