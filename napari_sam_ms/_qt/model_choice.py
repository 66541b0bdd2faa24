"""The widgets' model control: a registry name plus an optional checkpoint file.

:class:`ModelChoice` edits the choice of a :class:`napari_sam_ms.interaction.ModelHolder`
(which loads it); each widget owns one holder: no module-level model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit
from psygnal import Signal

from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.weights import embedded_model_available

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
    return tuple(t for t in MODEL_TYPES if t != "micro" or embedded_model_available())


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
        before = self._holder.choice
        self._holder.choose(self.model_type, self.checkpoint)
        if self._holder.choice != before:
            self.chosen.emit()


__all__ = ["MODEL_TOOLTIPS", "MODEL_TYPES", "ModelChoice", "available_model_types"]
