"""Worker-side prompt segmentation: model, cached embedding, masks per object (no Qt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam_ms.bridge import ObjectPrompt
from napari_sam_ms.embedding_cache import EmbeddingCache, image_key

from .image_target import ImageTarget
from .model_choice import ModelHolder
from .workers import Cancelled, Report


@dataclass
class Prediction:
    """Masks predicted for one round of prompts."""

    target: ImageTarget
    objects: list[ObjectPrompt]
    masks: list[np.ndarray]  # per object (C, H, W) bool
    scores: list[np.ndarray]  # per object (C,) predicted IoU
    model_id: str
    rank: int = 0  # 0 = best-scored candidate for every object, 1 = second best...
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

    def predict(self, target: ImageTarget, objects: list[ObjectPrompt], report: Report):
        """Load the model, embed (or reuse) the plane, predict three candidates per object."""
        report(0, 0)
        loaded = self.holder.get()
        predictor = loaded.predictor
        key = image_key(target.rgb, loaded.model_id)
        if key != self._embedded or not predictor.is_image_set:
            self._embedded = None
            cached = self.cache.get(key, loaded.model_id)
            if cached is not None:
                predictor.set_embedding(cached)
            else:
                predictor.set_image(target.rgb)
                self.cache.put(key, predictor.embedding, loaded.model_id, loaded.persistent)
            self._embedded = key
        if not report(1, 2):
            raise Cancelled()
        masks, scores = [], []
        for obj in objects:
            m, s, _ = predictor.predict(obj.points, obj.labels, obj.box, multimask_output=True)
            masks.append(np.asarray(m, bool))
            scores.append(np.asarray(s, np.float32))
        report(2, 2)
        notes = [loaded.note] if loaded.note else []
        return Prediction(target, objects, masks, scores, loaded.model_id, notes=notes)


__all__ = ["Prediction", "PromptSession"]
