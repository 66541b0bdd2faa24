"""Model selection shared by the widgets: a registry name plus an optional checkpoint file.

:class:`ModelHolder` (no Qt) loads the chosen model once and keeps it, with a
:class:`SamPredictor` (a :class:`MirrorAveragedPredictor` where the registry asks for it,
i.e. the embedded micro model) and an id for the embedding cache; :class:`ModelChoice` is
the magicgui control that edits its choice. Each widget owns one holder: no module-level model.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit
from psygnal import Signal

MODEL_TYPES = ("micro", "vit_b", "vit_l", "vit_h", "tiny")  # "micro" only when shipped
MODEL_TOOLTIPS = {
    "micro": "The embedded default model (15 MB, in the plugin: works offline): SAM's "
    "architecture at a small size, trained on synthetic fluorescence nuclei and cells. Fast; "
    "for other images use an official model or fine-tune it on your labels.",
    "vit_b": "SAM ViT-B (375 MB): the fastest official model; best choice on a CPU.",
    "vit_l": "SAM ViT-L (1.2 GB): slower, slightly better masks.",
    "vit_h": "SAM ViT-H (2.6 GB): Meta's default; slowest.",
    "tiny": "A few-kilobyte test model with random weights: for trying the plugin only.",
}


def available_model_types() -> tuple[str, ...]:
    """The model list of the widgets (the embedded model only when the package has it)."""
    from napari_sam_ms.weights import embedded_model_available

    return tuple(t for t in MODEL_TYPES if t != "micro" or embedded_model_available())


class ModelLoadError(RuntimeError):
    """The model could not be built; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A built model and what identifies its weights."""

    model: Any
    predictor: Any
    model_id: str
    persistent: bool  # its embeddings may be cached on disk (False for random weights)
    note: str = ""


class ModelHolder:
    """Loads the chosen model lazily (in a worker) and keeps it until the choice changes."""

    def __init__(self, model_type: str | None = None, checkpoint: str | None = None) -> None:
        if model_type is None:
            from napari_sam_ms.weights import default_model_type

            model_type = default_model_type()
        self.model_type = model_type
        self.checkpoint = checkpoint
        self._loaded: LoadedModel | None = None
        self._loaded_for: tuple[str, str | None] | None = None

    def choose(self, model_type: str, checkpoint: str | os.PathLike | None) -> None:
        """Select a model; it is (re)loaded on the next :meth:`get`."""
        self.model_type = model_type
        self.checkpoint = str(checkpoint) if checkpoint else None

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None and self._loaded_for == self._choice

    @property
    def _choice(self) -> tuple[str, str | None]:
        return self.model_type, self.checkpoint

    def get(self) -> LoadedModel:
        """The loaded model, building it first if needed (slow: call from a worker)."""
        if not self.is_loaded:
            self._loaded = None  # free the old model before building the new one
            self._loaded = self._load(*self._choice)
            self._loaded_for = self._choice
        return self._loaded

    @staticmethod
    def _load(model_type: str, checkpoint: str | None) -> LoadedModel:
        from napari_sam_ms.build_sam import build_sam_any, sam_model_registry
        from napari_sam_ms.embedding_cache import model_id
        from napari_sam_ms.mirror_average import MirrorAveragedPredictor
        from napari_sam_ms.predictor import SamPredictor
        from napari_sam_ms.weights import mirror_average_default

        note = ""
        try:
            if checkpoint is not None:
                if not Path(checkpoint).is_file():
                    raise FileNotFoundError(f"checkpoint file {checkpoint} does not exist")
                path = Path(checkpoint)
            elif model_type == "tiny":
                path = None
                note = "the tiny model has random weights: its masks are meaningless"
            else:
                from napari_sam_ms.weights import fetch_checkpoint

                path = fetch_checkpoint(model_type)
            if checkpoint is not None:
                model = build_sam_any(path, model_type)  # a fine-tuned file knows its size
            else:
                model = sam_model_registry[model_type](checkpoint=path)
        except Exception as exc:
            raise ModelLoadError(_advice(model_type, checkpoint, exc)) from exc
        if path is None:
            mid, persistent = f"{model_type}:random:{uuid.uuid4().hex}", False
        else:
            mid, persistent = model_id(model_type, path), True
        # The embedded model's prompts (also on a fine-tuned copy of it) are averaged over
        # mirror images; its cached embeddings then hold four views, kept apart by the id.
        if mirror_average_default(model_type):
            return LoadedModel(
                model, MirrorAveragedPredictor(model), f"{mid}+mirror4", persistent, note
            )
        return LoadedModel(model, SamPredictor(model), mid, persistent, note)


def _advice(model_type: str, checkpoint: str | None, exc: Exception) -> str:
    """Why the model failed to load, and what to do about it."""
    why = f"{type(exc).__name__}: {exc}"
    if checkpoint is not None:
        return (
            f"Could not load SAM {model_type} from {checkpoint} ({why}). Check that the file "
            f"is a SAM {model_type} checkpoint (.pth from Meta or .ckpt), or pick the model "
            "type that matches it."
        )
    folder = os.environ.get("NAPARI_SAM_MS_WEIGHTS") or "the napari-sam-ms cache folder"
    return (
        f"Could not load SAM {model_type} ({why}). Without internet, download the official "
        f"{model_type} weights elsewhere and either choose the file under 'Checkpoint' or copy "
        f"it into {folder} (set NAPARI_SAM_MS_WEIGHTS to use another folder)."
    )


class ModelChoice(Container):
    """Model type and optional checkpoint; edits a :class:`ModelHolder`.

    ``chosen`` is emitted after the holder took a different choice (the container's own
    ``changed`` may come before the holder is updated, and for edits that change nothing).
    """

    chosen = Signal()

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder
        self._type = ComboBox(
            name="model",
            label="Model",
            choices=available_model_types(),
            value=holder.model_type,
            tooltip="Which SAM to run. "
            + " ".join(MODEL_TOOLTIPS[k] for k in available_model_types())
            + " Official weights are downloaded once and reused.",
        )
        self._ckpt = FileEdit(
            name="checkpoint_file",
            label="Checkpoint",
            mode="r",
            filter="SAM weights (*.pth *.ckpt)",
            nullable=True,
            value=None,
            tooltip="Optional: your own weights file (.pth from Meta or a .ckpt), e.g. on a "
            "machine without internet. Leave empty to use the official weights.",
        )
        super().__init__(widgets=[self._type, self._ckpt], labels=True)
        self._type.changed.connect(self._apply)
        self._ckpt.changed.connect(self._apply)

    @property
    def model_type(self) -> str:
        return str(self._type.value)

    @model_type.setter
    def model_type(self, value: str) -> None:
        self._type.value = value

    @property
    def checkpoint(self) -> str | None:
        text = str(self._ckpt.line_edit.value).strip()  # the typed text: "" means none
        return str(Path(text).expanduser()) if text else None

    @checkpoint.setter
    def checkpoint(self, value: str | os.PathLike | None) -> None:
        self._ckpt.value = None if value in (None, "") else str(value)

    def _apply(self, *_: Any) -> None:
        before = (self._holder.model_type, self._holder.checkpoint)
        self._holder.choose(self.model_type, self.checkpoint)
        if (self._holder.model_type, self._holder.checkpoint) != before:
            self.chosen.emit()


__all__ = [
    "available_model_types",
    "MODEL_TYPES",
    "LoadedModel",
    "ModelChoice",
    "ModelHolder",
    "ModelLoadError",
]
