"""SAM weights: sizes, reading, checking, converting, saving and fetching.

Modules import one way only, each from those before it::

    config (model sizes)  <-  shapes (shape tables, type detection)  <-  pth_reader (.pth)
    <-  layouts (Meta / MobileSAM / micro-sam .pth layouts)
    <-  checkpoint (strict .ckpt/.pth read, atomic save)  <-  convert (.pth -> .ckpt, CLI)
    <-  registry (registry.json: download, hash, cache, per-model defaults)

Building a model from weights is :mod:`napari_sam_ms.build_sam`'s job, above this package.
"""

from .checkpoint import load_checkpoint, read_checkpoint, read_checkpoint_config, save_checkpoint
from .config import CONFIGS, MODEL_TYPES, full_config, normalize_model_type
from .registry import (
    DEFAULT_EMBEDDED,
    DEFAULT_OFFICIAL,
    ModelInfo,
    default_model_type,
    embedded_model_available,
    fetch_checkpoint,
    list_models,
    mirror_average_default,
    sha256_of,
    whole_image_settings,
    xxh128_of,
)

__all__ = [
    "CONFIGS",
    "DEFAULT_EMBEDDED",
    "DEFAULT_OFFICIAL",
    "MODEL_TYPES",
    "ModelInfo",
    "default_model_type",
    "embedded_model_available",
    "fetch_checkpoint",
    "full_config",
    "list_models",
    "load_checkpoint",
    "mirror_average_default",
    "normalize_model_type",
    "read_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
    "sha256_of",
    "whole_image_settings",
    "xxh128_of",
]
