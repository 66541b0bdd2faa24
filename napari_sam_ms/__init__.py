"""napari-sam-ms: Segment Anything on MindSpore, with napari widgets.

The public API uses Meta's names::

    from napari_sam_ms import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator
    from napari_sam_ms import pipeline  # the model card's pipeline("segment_anything", ...)

Names are imported lazily so that ``import napari_sam_ms`` stays cheap; nothing here imports
Qt or napari (the widgets live in ``napari_sam_ms._qt``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "sam_model_registry": "build_sam",
    "build_sam": "build_sam",
    "build_sam_vit_b": "build_sam",
    "build_sam_vit_l": "build_sam",
    "build_sam_vit_h": "build_sam",
    "SamPredictor": "predictor",
    "ImageEmbedding": "predictor",
    "SamAutomaticMaskGenerator": "automatic_mask_generator",
    "pipeline": "pipeline",
    "configure": "runtime",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam_ms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
