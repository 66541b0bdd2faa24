"""One loader: a model choice ``(name | None, checkpoint | None)`` becomes one record.

Every front door (the pipeline, the command line, the widgets, fine-tuning) calls
:func:`load_model` and, for prompts, :func:`make_predictor`, so they all decide alike:

- no name and no checkpoint: :func:`~napari_sam_ms.weights.default_model_type`;
- a name without a checkpoint: that model's registered weights (fetched once); ``tiny`` has
  random weights (with :data:`RANDOM_WEIGHTS_NOTE`); registry names that are not sizes
  (micro-sam's ``vit_b_lm``...) load their weights into their entry's architecture;
- a checkpoint: built with the size stored in (or detected from) the file; a name that
  disagrees with that size is refused;
- whole-image defaults and mirror averaging follow the model's type (a fine-tuned ``micro``
  is averaged like the shipped one), see :func:`napari_sam_ms.amg_settings.model_defaults`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .amg_settings import META_DEFAULTS, model_defaults
from .build_sam import build_sam_from_config, sam_model_registry
from .embedding_cache import model_id
from .mirror_average import MirrorAveragedPredictor
from .modeling import Sam
from .predictor import SamPredictor
from .settings import Settings, current
from .weights.checkpoint import load_params, read_params
from .weights.config import CONFIGS, config_of, full_config, normalize_model_type
from .weights.registry import (
    CACHE_VARIABLE,
    default_model_type,
    fetch_checkpoint,
    lookup,
    resolve_cache_dir,
    sha256_of,
)

PathLike = str | os.PathLike
Predictor = SamPredictor | MirrorAveragedPredictor

RANDOM_WEIGHTS_NOTE = "the tiny model has random weights (for tests only): masks are meaningless"
CUSTOM = "custom"  # the type of a checkpoint whose sizes match no known configuration


class ModelLoadError(ValueError):
    """The model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and everything the front doors decide from it.

    Args:
        model: the built :class:`Sam`.
        model_type: ``vit_b``, ``micro``, ``tiny``... (``custom`` for other sizes).
        checkpoint: the weights file (None for random weights).
        cache_id: identity of the weights for caches (unique per load for random weights).
        whole_image_defaults: every whole-image setting for this model (read-only).
        mirror_average: prompts are averaged over mirror images.
        random_weights: the weights are random (``tiny`` without a checkpoint).
        registered: the weights came from the registry (official or embedded).
        note: one line for the user (random weights), else "".
    """

    model: Sam
    model_type: str
    checkpoint: Path | None
    cache_id: str
    whole_image_defaults: Mapping[str, Any] = field(default_factory=dict)
    mirror_average: bool = False
    random_weights: bool = False
    registered: bool = False
    note: str = ""

    @cached_property
    def checkpoint_sha256(self) -> str | None:
        """Hex sha256 of the checkpoint file (computed once, on first use), or None."""
        return None if self.checkpoint is None else sha256_of(self.checkpoint)


def load_model(model: str | None = None, checkpoint: PathLike | None = None) -> LoadedModel:
    """Load the chosen model.

    Args:
        model: ``vit_b``, ``sam_vit_b``, ``micro``, ``tiny``...; None: the size stored in
            ``checkpoint``, else :func:`~napari_sam_ms.weights.default_model_type`.
        checkpoint: a ``.ckpt`` or Meta ``.pth``; None: the registered weights of ``model``.

    Returns:
        The :class:`LoadedModel`.

    Raises:
        ModelLoadError: unknown name, missing or unreadable file, a file of another size
            than ``model``, or weights that cannot be fetched (the message says what to do).
    """
    try:
        model_type = None if model is None else _canonical(normalize_model_type(model))
    except ValueError as exc:
        if model is not None and checkpoint is None and _registered(model):
            return _from_registry(model)
        raise ModelLoadError(str(exc)) from None
    if checkpoint is not None:
        return _from_file(Path(checkpoint).expanduser(), model_type)
    model_type = model_type or default_model_type()
    if model_type == "tiny":
        sam = sam_model_registry["tiny"]()
        cache_id = f"tiny:random:{uuid.uuid4().hex}"
        return _record(sam, "tiny", None, cache_id, random_weights=True, note=RANDOM_WEIGHTS_NOTE)
    try:
        path = Path(fetch_checkpoint(model_type))
        sam = _build(path, *read_params(path))
    except Exception as exc:
        raise ModelLoadError(_fetch_advice(model_type, exc)) from exc
    return _record(sam, model_type, path, model_id(model_type, path), registered=True)


def describe_model(sam: Sam, mirror_average: bool = False) -> LoadedModel:
    """A record for a model built elsewhere (weights unknown: Meta's whole-image defaults).

    Args:
        sam: the model.
        mirror_average: average prompts (and whole-image runs) over mirror images.

    Returns:
        A :class:`LoadedModel` with a unique cache id and no checkpoint.
    """
    model_type = _type_of(getattr(sam, "config", None) or {})
    defaults = {**META_DEFAULTS, "mirror_average": bool(mirror_average)}
    return LoadedModel(
        model=sam,
        model_type=model_type,
        checkpoint=None,
        cache_id=f"{model_type}:given:{uuid.uuid4().hex}",
        whole_image_defaults=MappingProxyType(defaults),
        mirror_average=bool(mirror_average),
    )


def make_predictor(loaded: LoadedModel, settings: Settings | None = None) -> Predictor:
    """The predictor for a loaded model: mirror-averaged where its record says so.

    Args:
        loaded: the record from :func:`load_model` or :func:`describe_model`.
        settings: the predictor's settings (None: :func:`napari_sam_ms.settings.current`).

    Returns:
        A :class:`SamPredictor` or :class:`MirrorAveragedPredictor`.
    """
    kind = MirrorAveragedPredictor if loaded.mirror_average else SamPredictor
    return kind(loaded.model, settings)


def embedding_id(loaded: LoadedModel, predictor: Any) -> str:
    """Cache id of the embeddings ``predictor`` makes for ``loaded`` (mirror views apart)."""
    return loaded.cache_id + str(getattr(predictor, "embedding_suffix", ""))


# --------------------------------------------------------------------- helpers


def _canonical(model_type: str) -> str:
    return "vit_h" if model_type == "default" else model_type


def _type_of(config: Mapping[str, Any]) -> str:
    """The name in ``CONFIGS`` of these sizes, else ``custom``."""
    try:
        full = full_config(config)
    except ValueError:
        return CUSTOM
    return next((n for n in CONFIGS if full_config(CONFIGS[n]) == full), CUSTOM)


def _record(
    sam: Sam,
    model_type: str,
    path: Path | None,
    cache_id: str,
    *,
    random_weights: bool = False,
    registered: bool = False,
    note: str = "",
) -> LoadedModel:
    defaults = model_defaults(model_type)
    return LoadedModel(
        model=sam,
        model_type=model_type,
        checkpoint=None if path is None else path.resolve(),
        cache_id=cache_id,
        whole_image_defaults=MappingProxyType(defaults),
        mirror_average=bool(defaults.get("mirror_average", False)),
        random_weights=random_weights,
        registered=registered,
        note=note,
    )


def _registered(name: str) -> bool:
    try:
        lookup(name)
    except ValueError:
        return False
    return True


def _from_registry(name: str) -> LoadedModel:
    """Weights registered under their own name (``vit_b_lm``), in their architecture."""
    _, entry = lookup(name)
    model_type = str(entry["model_type"])
    try:
        path = Path(fetch_checkpoint(name))
        sam = _build(path, *read_params(path))
    except Exception as exc:
        raise ModelLoadError(_fetch_advice(name, exc)) from exc
    return _record(sam, model_type, path, model_id(name, path), registered=True)


def _from_file(path: Path, model_type: str | None) -> LoadedModel:
    """A model from a checkpoint file, of the size the file holds."""
    if not path.is_file():
        raise ModelLoadError(
            f"checkpoint file {path} does not exist: choose an existing .ckpt or .pth file, "
            "or no checkpoint to use the model's registered weights"
        )
    try:
        params, stored = read_params(path)
    except Exception as exc:
        raise ModelLoadError(_file_advice(model_type, path, exc)) from exc
    if stored is None and model_type is None:
        raise ModelLoadError(
            f"{path} does not say which model size it holds: name the model type "
            "(vit_b, vit_l, vit_h, micro...) as well"
        )
    found = model_type if stored is None else _type_of(stored)
    if model_type is not None and stored is not None:
        _refuse_other_size(path, model_type, stored, found)
    try:
        sam = _build(path, params, stored if stored is not None else config_of(found))
    except Exception as exc:
        raise ModelLoadError(_file_advice(found, path, exc)) from exc
    return _record(sam, found, path, model_id(found, path))


def _refuse_other_size(path: Path, model_type: str, stored: Mapping[str, Any], found: str) -> None:
    """Raise when the file's sizes are not those of ``model_type``."""
    want, have = config_of(model_type), full_config(stored)
    diff = [f"{k}={have[k]!r} vs {want[k]!r}" for k in want if have.get(k) != want[k]]
    if not diff:
        return
    shown = ", ".join(diff[:3]) + (", ..." if len(diff) > 3 else "")
    known = found != CUSTOM
    what = f"a SAM {found} model" if known else "a SAM model of another size"
    fix = f"choose the model type {found}, or give" if known else "give"
    raise ModelLoadError(
        f"{path} holds {what}, not {model_type} (file vs {model_type}: {shown}): "
        f"{fix} no model type so that the size stored in the file is used"
    )


def _build(path: Path, params: Mapping[str, Any], config: Mapping[str, Any] | None) -> Sam:
    """A model of ``config``'s size with ``params`` loaded strictly."""
    if config is None:
        raise ValueError(f"{path} does not say which model size it holds")
    sam = build_sam_from_config(config)
    load_params(sam, params, str(path))
    return sam


def _file_advice(model_type: str | None, path: Path, exc: Exception) -> str:
    """Why a checkpoint file failed to load, and what to do about it."""
    what = f"SAM {model_type}" if model_type else "SAM"
    return (
        f"Could not load {what} from {path} ({type(exc).__name__}: {exc}). Check that the file "
        "is a SAM checkpoint (.pth/.pt from Meta, MobileSAM or micro-sam, or a .ckpt), or pick "
        "the model type that matches it."
    )


def _fetch_advice(model_type: str, exc: Exception) -> str:
    """Why registered weights failed to load, and what to do about it."""
    try:
        folder = str(resolve_cache_dir())
    except OSError:
        folder = current().weights_dir or "the napari-sam-ms cache folder"
    return (
        f"Could not load SAM {model_type} ({type(exc).__name__}: {exc}). Without internet, "
        f"download the official {model_type} weights elsewhere and either give that file as "
        "the checkpoint ('Checkpoint' in the widgets, --checkpoint on the command line) or "
        f"copy it into {folder} (set {CACHE_VARIABLE} to use another folder)."
    )


__all__ = [
    "CUSTOM",
    "LoadedModel",
    "ModelLoadError",
    "Predictor",
    "RANDOM_WEIGHTS_NOTE",
    "describe_model",
    "embedding_id",
    "load_model",
    "make_predictor",
]
