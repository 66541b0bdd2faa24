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
from qtpy.QtCore import Qt

from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.weights import ModelInfo, embedded_model_available, list_models
from napari_sam_ms.weights.registry import DEFAULT_EMBEDDED

TINY = ModelInfo(
    "tiny", "a few-kilobyte test model with random weights: for trying the plugin only", True
)


def model_list() -> list[ModelInfo]:
    """The widgets' models with their one line: the embedded model first (only when the
    package ships it), then the registry's others, then ``tiny``."""
    models = list_models()
    shipped = embedded_model_available()
    first = [m for m in models if m.name == DEFAULT_EMBEDDED and shipped]
    return [*first, *(m for m in models if m.name != DEFAULT_EMBEDDED), TINY]


def available_model_types() -> tuple[str, ...]:
    """The names in the widgets' model list."""
    return tuple(m.name for m in model_list())


def item_tooltip(model: ModelInfo) -> str:
    """One model's line in the list, and whether it needs a download."""
    where = "on this machine" if model.offline else "downloaded once on first use"
    return f"{model.name}: {model.description} ({where})"


class ModelChoice(Container):
    """Model type and optional checkpoint; edits a :class:`ModelHolder`.

    ``chosen`` is emitted after the holder took a different choice (the container's own
    ``changed`` may come before the holder is updated, and for edits that change nothing).
    """

    chosen = Signal()

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder
        models = model_list()
        self._type = ComboBox(
            name="model",
            label="Model",
            choices=[m.name for m in models],
            value=holder.model_type,
            tooltip="Which SAM to run: Meta's, MobileSAM (vit_t), micro-sam's microscopy "
            "models (*_lm, *_em_organelles...) or the embedded one; hover over a model in "
            "the list for what it is for. Weights are downloaded once and reused.",
        )
        for i, model in enumerate(models):
            self._type.native.setItemData(i, item_tooltip(model), Qt.ItemDataRole.ToolTipRole)
        self._ckpt = FileEdit(
            name="checkpoint_file",
            label="Checkpoint",
            mode="r",
            filter="SAM weights (*.pth *.pt *.ckpt)",
            nullable=True,
            value=None,
            tooltip="Optional: your own weights file (.pth/.pt from Meta, MobileSAM or "
            "micro-sam, or a .ckpt), e.g. on a machine without internet. Leave empty to use "
            "the registered weights of the model above.",
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


__all__ = ["TINY", "ModelChoice", "available_model_types", "item_tooltip", "model_list"]
