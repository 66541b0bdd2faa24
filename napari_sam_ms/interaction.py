"""What the widgets do besides drawing, without Qt: hold a model, predict from prompts.

:class:`ModelHolder` (:mod:`napari_sam_ms.model_holder`, re-exported here) keeps one
widget's model choice; :class:`PromptSession` embeds a plane (cached) and predicts masks per
object. Long work stops by raising :class:`napari_sam_ms.progress.Cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .bridge import ObjectPrompt
from .embedding_cache import EmbeddingCache, image_key
from .interaction_tiles import TiledPrompts, TileSpec, dark_on_bright, masks_over, region_of
from .model_holder import HeldModel, Loader, ModelHolder, PredictorFactory
from .progress import Cancelled
from .utils.image import looks_dark_on_bright
from .utils.tiling import Box

Report = Callable[[int, int], bool]


# ----------------------------------------------------------------- prompts
class PlaneTarget(Protocol):
    """The image plane a prompt round runs on (the widgets' ``ImageTarget``).

    A tiled target also has ``tiles`` (a :class:`TileSpec`), ``source`` (the level-0
    :class:`~napari_sam_ms.utils.plane_source.PlaneSource`), ``spatial_shape`` and
    ``stack_id`` (None for 2D layers, else a callable giving the stack's cache id); its
    ``rgb`` is not used.
    """

    rgb: np.ndarray  # the model input (already inverted when ``inverted``)
    slice_index: tuple[int, ...]
    level: int
    inverted: bool


UNSURE_IOU = 0.5  # a shown mask scored below this is called unsure


@dataclass
class Prediction:
    """Masks predicted for one round of prompts.

    Args:
        target: the plane predicted on.
        objects: the prompts, one per object.
        masks: per object (C, H, W) bool.
        scores: per object (C,) predicted IoU.
        model_id: cache id of the model that made them.
        rank: 0 = best-scored candidate for every object, 1 = second best...
        notes: lines for the user (e.g. random weights).
        dark_on_bright: whether the model input looks dark-on-bright (None: not checked,
            as every object's best mask was sure).
        boxes: tiled rounds: per object the (y0, x0, y1, x1) plane box its masks crop
            (None: every mask is the whole plane).
        status: one line for the status bar (tiles: a coarser level used), or "".
    """

    target: Any
    objects: list[ObjectPrompt]
    masks: list[np.ndarray]
    scores: list[np.ndarray]
    model_id: str
    rank: int = 0
    notes: list[str] = field(default_factory=list)
    dark_on_bright: bool | None = None
    boxes: list[Box] | None = None
    status: str = ""

    def region_masks(self) -> tuple[Box, list[np.ndarray]]:
        """(y0, x0, y1, x1) of the plane holding every object, and each shown mask over it."""
        region = region_of(self.boxes, self.target.plane_shape)
        masks = self.chosen_masks()
        return region, masks if not self.boxes else masks_over(region, masks, self.boxes)

    def chosen(self, i: int) -> int:
        """Index of the candidate shown for object ``i``."""
        order = np.argsort(-self.scores[i], kind="stable")
        return int(order[self.rank % len(order)])

    def chosen_masks(self) -> list[np.ndarray]:
        return [self.masks[i][self.chosen(i)] for i in range(len(self.masks))]

    def n_candidates(self) -> int:
        return len(self.scores[0]) if self.scores else 0

    def describe(self) -> str:
        """Which candidate is shown, for the widget."""
        n, c = len(self.masks), self.n_candidates()
        which = "best" if self.rank % c == 0 else f"#{self.rank % c + 1}"
        if n == 1:
            return f"{which} of {c} (predicted IoU {self.scores[0][self.chosen(0)]:.2f})"
        return f"{n} objects, {which} mask each"

    def provenance(self, i: int) -> dict[str, Any]:
        """The prompts and settings that made object ``i`` (saved with the labels)."""
        obj = self.objects[i]
        tile = {} if self.boxes is None else {"crop_yxyx": list(self.boxes[i])}
        return tile | {
            "points_xy": None if obj.points is None else obj.points.tolist(),
            "point_labels": None if obj.labels is None else obj.labels.tolist(),
            "box_xyxy": None if obj.box is None else obj.box.tolist(),
            "slice": list(self.target.slice_index),
            "level": self.target.level,
            "model": self.model_id,
            "candidate": self.chosen(i),
            "inverted": bool(self.target.inverted),
        }

    def weak(self) -> list[tuple[int, float, bool]]:
        """(object, predicted IoU, empty) of the shown masks that are empty or unsure."""
        out = []
        for i, mask in enumerate(self.chosen_masks()):
            score, empty = float(self.scores[i][self.chosen(i)]), not mask.any()
            if empty or score < UNSURE_IOU:
                out.append((i, score, empty))
        return out

    def advice(self) -> str:
        """A status line when a shown mask is empty or unsure: what and what to try; else ""."""
        weak = self.weak()
        if not weak:
            return ""
        low = min(score for _, score, _ in weak)
        if len(self.masks) == 1:
            what = "Empty mask" if weak[0][2] else "Unsure mask"
            head = f"{what} (predicted IoU {low:.2f})"
        else:
            head = (
                f"{len(weak)} of {len(self.masks)} objects empty or unsure "
                f"(lowest predicted IoU {low:.2f})"
            )
        if self.dark_on_bright and self.target.inverted:
            return f"{head}: the model input looks dark-on-bright; try unticking Invert."
        if self.dark_on_bright:
            return f"{head}: the image looks dark-on-bright; try Invert."
        return f"{head}: click nearer the object's centre, or draw a box around it."


class PromptSession:
    """Model, embedding cache and the embedding currently set; used by one worker at a time.

    Tiled targets (``target.tiles`` set) are answered by
    :class:`~napari_sam_ms.interaction_tiles.TiledPrompts` from the plane's level 0, wrapping
    the holder's predictor and sharing ``cache``.
    """

    def __init__(self, holder: ModelHolder, cache: EmbeddingCache) -> None:
        self.holder = holder
        self.cache = cache
        self._embedded: str | None = None
        self.tiled = TiledPrompts(cache)

    def predict(
        self, target: PlaneTarget, objects: list[ObjectPrompt], report: Report
    ) -> Prediction:
        """Load the model, embed (or reuse) the plane, predict three candidates per object.

        Returns:
            The :class:`Prediction`.

        Raises:
            Cancelled: ``report`` returned False after the embedding.
        """
        report(0, 0)
        held = self.holder.get()
        if getattr(target, "tiles", None) is not None:
            return self._predict_tiled(held, target, objects, report)
        self._embed(held, target.rgb)
        if not report(1, 2):
            raise Cancelled()
        masks, scores = predict_objects(held.predictor, objects)
        report(2, 2)
        notes = [held.note] if held.note else []
        pred = Prediction(target, objects, masks, scores, held.model_id, notes=notes)
        if pred.weak():  # only then is the polarity worth its time
            pred.dark_on_bright = looks_dark_on_bright(target.rgb)
        return pred

    def _predict_tiled(
        self, held: HeldModel, target: Any, objects: list[ObjectPrompt], report: Report
    ) -> Prediction:
        """Each object from the tile that holds it, at the plane's own resolution."""
        self._embedded = None  # the tiles replace whatever the predictor held
        fields = self.tiled.predict(held, target, objects, report)
        notes = [held.note] if held.note else []
        pred = Prediction(target, objects, model_id=held.model_id, notes=notes, **fields)
        weak = pred.weak()
        if weak:
            box = pred.boxes[weak[0][0]]  # type: ignore[index]
            pred.dark_on_bright = dark_on_bright(target, box)
        return pred

    def _embed(self, held: HeldModel, rgb: np.ndarray) -> None:
        """Set the plane's embedding on the predictor: kept, cached, or computed."""
        predictor, mid = held.predictor, held.model_id
        key = image_key(rgb, mid)
        if key == self._embedded and predictor.is_image_set:
            return
        self._embedded = None
        cached = self.cache.get(key, mid)
        if cached is not None:
            predictor.set_embedding(cached)
        else:
            predictor.set_image(rgb)
            self.cache.put(key, predictor.embedding, mid, held.persistent)
        self._embedded = key


def _signature(obj: ObjectPrompt) -> tuple[int, bool]:
    """Objects with equal signatures can share one batched model call."""
    return (0 if obj.points is None else len(obj.points), obj.box is not None)


def predict_objects(
    predictor: Any, objects: list[ObjectPrompt]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three candidate masks and scores per object.

    Objects with the same number of points and the same box use are predicted together in
    one ``predict_batch`` call (no padding, so each result equals its own ``predict``); an
    object alone in its group uses ``predict``.

    Returns:
        masks: per object (C, H, W) bool; scores: per object (C,) float32.
    """
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault(_signature(obj), []).append(i)
    masks: list[Any] = [None] * len(objects)
    scores: list[Any] = [None] * len(objects)
    for (n_points, has_box), idx in groups.items():
        group = [objects[i] for i in idx]
        if len(group) == 1:
            obj = group[0]
            m, s, _ = predictor.predict(obj.points, obj.labels, obj.box, multimask_output=True)
            m, s = np.asarray(m)[None], np.asarray(s)[None]
        else:
            m, s, _ = predictor.predict_batch(
                np.stack([o.points for o in group]) if n_points else None,
                np.stack([o.labels for o in group]) if n_points else None,
                np.stack([o.box for o in group]) if has_box else None,
                multimask_output=True,
            )
        for k, i in enumerate(idx):
            masks[i] = np.asarray(m[k], bool)
            scores[i] = np.asarray(s[k], np.float32)
    return masks, scores


__all__ = [
    "UNSURE_IOU",
    "HeldModel",
    "Loader",
    "ModelHolder",
    "PlaneTarget",
    "Prediction",
    "PredictorFactory",
    "PromptSession",
    "Report",
    "TileSpec",
    "predict_objects",
]
