"""What the widgets do besides drawing, without Qt: hold a model, predict from prompts.

:class:`ModelHolder` keeps one widget's model choice and loads it lazily through
:func:`napari_sam_ms.loader.load_model` (in a worker); :class:`PromptSession` embeds a plane
(cached) and predicts masks per object. Long work stops by raising
:class:`napari_sam_ms.progress.Cancelled`. Tests give a holder a fake ``loader`` and
``predictor_factory`` instead of patching it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .bridge import ObjectPrompt
from .embedding_cache import EmbeddingCache, image_key
from .loader import LoadedModel, embedding_id, load_model, make_predictor
from .progress import Cancelled
from .weights.registry import default_model_type

Loader = Callable[[str | None, str | None], LoadedModel]
PredictorFactory = Callable[[LoadedModel], Any]
Report = Callable[[int, int], bool]


@dataclass(frozen=True)
class HeldModel:
    """A loaded model with the predictor made for it.

    Args:
        loaded: the loader's record.
        predictor: :func:`napari_sam_ms.loader.make_predictor` of it.
    """

    loaded: LoadedModel
    predictor: Any

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def note(self) -> str:
        return self.loaded.note

    @property
    def model_id(self) -> str:
        """Cache id of this predictor's embeddings."""
        return embedding_id(self.loaded, self.predictor)

    @property
    def persistent(self) -> bool:
        """Its embeddings may be cached on disk (not for random weights)."""
        return not self.loaded.random_weights


class ModelHolder:
    """One widget's model choice, loaded lazily and kept until the choice changes.

    Args:
        model_type: the chosen type; None: the size stored in ``checkpoint``, else
            :func:`~napari_sam_ms.weights.default_model_type`.
        checkpoint: the chosen file, or None.
        loader: turns (type, checkpoint) into a record (default :func:`load_model`).
        predictor_factory: makes the predictor for a record (default :func:`make_predictor`).
    """

    def __init__(
        self,
        model_type: str | None = None,
        checkpoint: str | None = None,
        *,
        loader: Loader = load_model,
        predictor_factory: PredictorFactory = make_predictor,
    ) -> None:
        if model_type is None and checkpoint is None:
            model_type = default_model_type()
        self.model_type: str | None = model_type
        self.checkpoint = checkpoint
        self._loader = loader
        self._predictor_factory = predictor_factory
        self._held: HeldModel | None = None
        self._held_for: tuple[str | None, str | None] | None = None

    @property
    def choice(self) -> tuple[str | None, str | None]:
        """(model type, checkpoint or None)."""
        return self.model_type, self.checkpoint

    def choose(self, model_type: str, checkpoint: str | os.PathLike | None) -> None:
        """Select a model; it is (re)loaded on the next :meth:`get`."""
        self.model_type = model_type
        self.checkpoint = str(checkpoint) if checkpoint else None

    @property
    def is_loaded(self) -> bool:
        return self._held is not None and self._held_for == self.choice

    def get(self) -> HeldModel:
        """The chosen model and its predictor, loading them first if needed (slow)."""
        if not self.is_loaded:
            self._held = None  # free the old model before building the new one
            choice = self.choice
            loaded = self._loader(*choice)
            self._held = HeldModel(loaded, self._predictor_factory(loaded))
            self._held_for = choice
        assert self._held is not None
        return self._held

    def load_fresh(self, choice: tuple[str | None, str | None] | None = None) -> LoadedModel:
        """A new copy of a choice (default: the current one), not kept (e.g. to train it)."""
        return self._loader(*(choice or self.choice))


# ----------------------------------------------------------------- prompts
class PlaneTarget(Protocol):
    """The image plane a prompt round runs on (the widgets' ``ImageTarget``)."""

    rgb: np.ndarray
    slice_index: tuple[int, ...]
    level: int


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
    """

    target: Any
    objects: list[ObjectPrompt]
    masks: list[np.ndarray]
    scores: list[np.ndarray]
    model_id: str
    rank: int = 0
    notes: list[str] = field(default_factory=list)

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
        return {
            "points_xy": None if obj.points is None else obj.points.tolist(),
            "point_labels": None if obj.labels is None else obj.labels.tolist(),
            "box_xyxy": None if obj.box is None else obj.box.tolist(),
            "slice": list(self.target.slice_index),
            "level": self.target.level,
            "model": self.model_id,
            "candidate": self.chosen(i),
        }


class PromptSession:
    """Model, embedding cache and the embedding currently set; used by one worker at a time."""

    def __init__(self, holder: ModelHolder, cache: EmbeddingCache) -> None:
        self.holder = holder
        self.cache = cache
        self._embedded: str | None = None

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
        self._embed(held, target.rgb)
        if not report(1, 2):
            raise Cancelled()
        masks, scores = [], []
        for obj in objects:
            m, s, _ = held.predictor.predict(obj.points, obj.labels, obj.box, multimask_output=True)
            masks.append(np.asarray(m, bool))
            scores.append(np.asarray(s, np.float32))
        report(2, 2)
        notes = [held.note] if held.note else []
        return Prediction(target, objects, masks, scores, held.model_id, notes=notes)

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


__all__ = [
    "HeldModel",
    "Loader",
    "ModelHolder",
    "PlaneTarget",
    "Prediction",
    "PredictorFactory",
    "PromptSession",
    "Report",
]
