"""Registered SAM weights: where they come from, where they are kept, how they are fetched.

The registry (``weights/registry.json``) maps names such as ``sam_vit_b`` or ``vit_b_lm`` to
entries (``model_type`` is the architecture; ``description`` one line for the model list)::

    {"model_type": "vit_b", "url": "https://...pth", "sha256": "...", "size": 375042383}
    {"model_type": "vit_b", "url": "https://.../vit_b.pt", "fname": "vit_b_lm.pt",
     "xxh128": "..."}                                      # micro-sam publishes xxh128
    {"model_type": "tiny", "file": "sam_tiny.ckpt", "sha256": "..."}   # shipped with us

``url`` entries are downloaded once with pooch into the cache folder (as ``fname``, default
the URL's last part), checked against ``sha256`` and/or ``xxh128`` (every hash given must
match) and converted to ``.ckpt`` once; later calls use the ``.ckpt`` without network.
``file`` entries are paths relative to the ``weights`` folder (``.ckpt`` used as is,
``.pth`` converted into the cache). A ``whole_image`` table holds whole-image filter settings
chosen for that model's weights (:func:`whole_image_settings`); ``"mirror_average": true``
averages its prompt predictions over mirror images (:func:`mirror_average_default`).

Cache folder: ``Settings.weights_dir`` (``NAPARI_SAM_MS_WEIGHTS``) if set, else
``pooch.os_cache("napari-sam-ms")``.
Offline machines: copy the official ``.pth`` (e.g. ``sam_vit_b_01ec64.pth``) into the
cache folder or the ``weights`` folder, named as the entry's ``fname`` (micro-sam's
``vit_b_lm`` downloads as ``vit_b.pt``: copy it as ``vit_b_lm.pt``); it is checked and
converted on first use.
``Settings.weights_url`` (``NAPARI_SAM_MS_WEIGHTS_URL``) replaces the download base URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..settings import current
from .convert import convert

PathLike = str | os.PathLike

CACHE_VARIABLE = "NAPARI_SAM_MS_WEIGHTS"  # named in messages; read by napari_sam_ms.settings

logger = logging.getLogger(__name__)


def bundled_weights_dir() -> Path | None:
    """The ``weights`` data folder: this subpackage's folder in a wheel (the top-level
    ``weights/`` is copied into it), the checkout's ``weights/`` in a source install."""
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent.parent / "weights"):
        if (candidate / "registry.json").is_file():
            return candidate
    return None


def load_registry(path: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The ``models`` table of a registry file (default: the bundled ``registry.json``)."""
    if path is None:
        folder = bundled_weights_dir()
        if folder is None:
            raise FileNotFoundError("weights/registry.json is missing from the installation")
        path = folder / "registry.json"
    with open(path, encoding="utf-8") as fh:
        return dict(json.load(fh)["models"])


def resolve_cache_dir(cache_dir: PathLike | None = None) -> Path:
    """The folder for downloaded and converted weights (created if needed)."""
    if cache_dir is None:
        cache_dir = current().weights_dir
        if not cache_dir:
            import pooch

            cache_dir = pooch.os_cache("napari-sam-ms")
    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lookup(
    name: str, registry: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[str, dict[str, Any]]:
    """Registry (name, entry) for ``sam_vit_b``, ``vit_b`` or ``default`` (= vit_h)."""
    registry = load_registry() if registry is None else registry
    name = "vit_h" if name == "default" else name
    for key in (name, f"sam_{name}"):
        if key in registry:
            return key, dict(registry[key])
    for key, entry in registry.items():
        if entry.get("model_type") == name:
            return key, dict(entry)
    raise ValueError(
        f"no weights are registered for {name!r} (known: {sorted(registry)}); "
        "pass a checkpoint path instead"
    )


def sha256_of(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def xxh128_of(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex xxh128 of a file (the hash micro-sam publishes), read in chunks."""
    import xxhash

    digest = xxhash.xxh128()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


HASHES = {"sha256": sha256_of, "xxh128": xxh128_of}  # entry key -> file hash function


def verify_file(path: Path, entry: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``path`` has the entry's size, sha256 and xxh128 (those given)."""
    size = entry.get("size")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ValueError(
            f"{path} has {actual_size} bytes, not the {size} of the official file; "
            "delete or replace it"
        )
    for kind, hash_of in HASHES.items():
        expected = entry.get(kind)
        if expected and (actual := hash_of(path)) != expected.lower():
            raise ValueError(
                f"{path} does not match the official file ({kind} {actual}, expected "
                f"{expected}); delete or replace it"
            )


def known_hash(entry: Mapping[str, Any]) -> str | None:
    """pooch's ``known_hash`` for an entry: ``sha256:<hex>``, else ``xxh128:<hex>``, else None."""
    return next((f"{k}:{entry[k].lower()}" for k in HASHES if entry.get(k)), None)


def _source_name(entry: Mapping[str, Any]) -> str:
    """File name of the original weights (``sam_vit_b_01ec64.pth``)."""
    return entry.get("fname") or entry["url"].rsplit("/", 1)[-1]


def _search_dirs(cache: Path) -> list[Path]:
    bundled = bundled_weights_dir()
    return [cache] + ([bundled] if bundled is not None and bundled != cache else [])


def _find(name: str, folders: list[Path]) -> Path | None:
    return next((d / name for d in folders if (d / name).is_file()), None)


def _convert(source: Path, target: Path, entry: Mapping[str, Any]) -> Path:
    """Convert a verified .pth into ``target`` (atomic; see :mod:`.convert`)."""
    logger.info("converting %s -> %s", source, target)
    return convert(source, target, model_type=entry.get("model_type"))


def _download(url: str, fname: str, cache: Path, known: str | None, progress: bool) -> Path:
    """Download with pooch (temp file, ``known`` hash check, then move) into ``cache/fname``."""
    import pooch
    import requests

    try:
        got = pooch.retrieve(url, known_hash=known, fname=fname, path=cache, progressbar=progress)
    except requests.exceptions.RequestException as exc:
        raise ConnectionError(
            f"could not download {fname} from {url} ({exc}); without internet, copy the "
            f"official {fname} into {cache} (or set {CACHE_VARIABLE} to its folder)"
        ) from None
    except ValueError as exc:
        raise ValueError(
            f"the download of {fname} from {url} is corrupt or not the official file, "
            f"and was discarded: {exc}"
        ) from None
    return Path(got)


def _from_file_entry(entry: Mapping[str, Any], cache: Path) -> Path:
    """Weights shipped in the ``weights`` folder."""
    folder = bundled_weights_dir()
    path = (folder / entry["file"]) if folder is not None else Path(entry["file"])
    if not path.is_file():
        raise FileNotFoundError(f"the bundled weights file {path} is missing; reinstall")
    verify_file(path, entry)
    if path.suffix == ".ckpt":
        return path
    target = cache / path.with_suffix(".ckpt").name
    return target if target.is_file() else _convert(path, target, entry)


DEFAULT_OFFICIAL = "vit_b"  # preferred when its weights are already on this machine
DEFAULT_EMBEDDED = "micro"  # shipped in the weights folder: works offline


def official_weights_present(
    model_type: str = DEFAULT_OFFICIAL, cache_dir: PathLike | None = None
) -> bool:
    """Whether the official weights of ``model_type`` are on disk (no network is used)."""
    try:
        _, entry = lookup(model_type)
    except ValueError:
        return False
    return "file" not in entry and _downloaded(entry, _search_dirs(resolve_cache_dir(cache_dir)))


def _downloaded(entry: Mapping[str, Any], folders: list[Path]) -> bool:
    """Whether a ``url`` entry's file (or its converted ``.ckpt``) is in one of ``folders``."""
    fname = _source_name(entry)
    names = (Path(fname).with_suffix(".ckpt").name, fname)
    return any(_find(n, folders) is not None for n in names)


def embedded_model_available(registry: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether the embedded default model is registered and its file is in the package."""
    try:
        _, entry = lookup(DEFAULT_EMBEDDED, registry)
    except ValueError:
        return False
    folder = bundled_weights_dir()
    return "file" in entry and folder is not None and (folder / entry["file"]).is_file()


def default_model_type(cache_dir: PathLike | None = None) -> str:
    """The model used when none is chosen: official ``vit_b`` if its weights are already
    here (downloaded or copied); else the embedded ``micro`` model, which needs no network,
    when the package ships it; else ``vit_b`` (downloaded on first use)."""
    if official_weights_present(cache_dir=cache_dir) or not embedded_model_available():
        return DEFAULT_OFFICIAL
    return DEFAULT_EMBEDDED


def whole_image_settings(
    model_type: str, registry: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, float]:
    """Whole-image filter settings chosen for a registered model's own weights (its
    registry entry's ``whole_image``); empty when it has none (Meta's defaults apply).

    The embedded ``micro`` model has them: its predicted IoUs run lower than those of
    Meta's models, and with Meta's thresholds (0.88, 0.95) it keeps almost no mask. Its
    values were chosen on synthetic validation images (docs/training.md).
    """
    try:
        _, entry = lookup(model_type, registry)
    except ValueError:
        return {}
    return {str(k): float(v) for k, v in dict(entry.get("whole_image", {})).items()}


def mirror_average_default(
    model_type: str, registry: Mapping[str, Mapping[str, Any]] | None = None
) -> bool:
    """Whether prompts on a registered model's own weights are averaged over mirror images
    (its registry entry's ``mirror_average``; see :mod:`napari_sam_ms.mirror_average`):
    True for the embedded ``micro`` model, False for Meta's models.
    """
    try:
        _, entry = lookup(model_type, registry)
    except ValueError:
        return False
    return bool(entry.get("mirror_average", False))


def fetch_checkpoint(
    model_type_or_name: str,
    cache_dir: PathLike | None = None,
    progress: bool = True,
    *,
    registry: Mapping[str, Mapping[str, Any]] | None = None,
    base_url: str | None = None,
) -> Path:
    """Path of a converted ``.ckpt`` for a registered model, fetching it once if needed.

    Order: the ``.ckpt`` in the cache (or ``weights`` folder) is returned without network;
    else a ``.pth`` found there (e.g. copied by hand) is checked against its sha256 and
    converted; else it is downloaded with pooch (hash-checked), then converted.

    Args:
        model_type_or_name: ``vit_b``, ``sam_vit_b``, ``default``... (see the registry).
        cache_dir: folder for downloads and conversions (default: see module docstring).
        progress: show a download progress bar.
        registry: replaces ``weights/registry.json`` (tests, private models).
        base_url: download from ``base_url/<file name>`` instead of the registry URL;
            default ``Settings.weights_url``.

    Raises:
        ValueError: unknown name, or a file that is not the registered one.
        ConnectionError: the download failed.
    """
    _, entry = lookup(model_type_or_name, registry)
    cache = resolve_cache_dir(cache_dir)
    if "file" in entry:
        return _from_file_entry(entry, cache)
    fname = _source_name(entry)
    ckpt_name = Path(fname).with_suffix(".ckpt").name
    folders = _search_dirs(cache)
    found = _find(ckpt_name, folders)
    if found is not None:
        return found
    source = _find(fname, folders)
    if source is not None:
        verify_file(source, entry)
    else:
        base = base_url or current().weights_url
        url = f"{base.rstrip('/')}/{fname}" if base else entry["url"]
        source = _download(url, fname, cache, known_hash(entry), progress)
    return _convert(source, cache / ckpt_name, entry)


class ModelInfo(NamedTuple):
    """One line of the model list: the name to choose, what it is for, whether it works
    without network now (shipped, or its weights already downloaded or copied here)."""

    name: str
    description: str
    offline: bool


def display_name(key: str, entry: Mapping[str, Any]) -> str:
    """The name a registry entry is chosen by: ``vit_b`` for ``sam_vit_b``, ``micro`` for
    ``sam_ms_micro``, else the key itself (``vit_b_lm``)."""
    for prefix in ("sam_ms_", "sam_"):
        if key == f"{prefix}{entry.get('model_type')}":
            return key[len(prefix) :]
    return key


def list_models(
    cache_dir: PathLike | None = None, registry: Mapping[str, Mapping[str, Any]] | None = None
) -> list[ModelInfo]:
    """Every registered model, in registry order, as (name, description, offline).

    No network is used; ``file`` entries count as offline when the package ships the file.
    """
    registry = load_registry() if registry is None else registry
    folders = _search_dirs(resolve_cache_dir(cache_dir))
    bundled = bundled_weights_dir()
    out = []
    for key, entry in registry.items():
        if "file" in entry:
            offline = bundled is not None and (bundled / entry["file"]).is_file()
        else:
            offline = _downloaded(entry, folders)
        out.append(ModelInfo(display_name(key, entry), str(entry.get("description", "")), offline))
    return out


__all__ = [
    "DEFAULT_EMBEDDED",
    "DEFAULT_OFFICIAL",
    "CACHE_VARIABLE",
    "bundled_weights_dir",
    "default_model_type",
    "embedded_model_available",
    "HASHES",
    "ModelInfo",
    "display_name",
    "fetch_checkpoint",
    "known_hash",
    "list_models",
    "load_registry",
    "lookup",
    "mirror_average_default",
    "official_weights_present",
    "resolve_cache_dir",
    "sha256_of",
    "verify_file",
    "whole_image_settings",
    "xxh128_of",
]
