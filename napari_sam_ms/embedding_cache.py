"""Image embeddings cached in memory (LRU) and on disk (``.npz``), no Qt.

An embedding is found again by a key made of

- a content hash (blake2b) of the exact model input: the uint8 RGB plane, its shape and dtype
  (so the contrast limits used to make it are part of the key),
- the model id (type + weights identity, see :func:`model_id`),
- an optional ``extra`` tuple (slice index, tile box...) for callers that want it.

Disk entries are written atomically (temporary file in the same folder, then ``os.replace``),
carry a format version, their key, the model id and sizes, and are checked on reading: a
stale, corrupt or mismatching file is ignored and removed. Folder: ``Settings.cache_dir``
(``NAPARI_SAM_MS_CACHE``; ``off`` disables the disk cache), else
``pooch.os_cache("napari-sam-ms")/embeddings``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .predictor import ImageEmbedding
from .settings import Settings, current

FORMAT_VERSION = 1
_OFF = {"off", "0", "false", "no", "none"}

logger = logging.getLogger(__name__)


def default_cache_dir(settings: Settings | None = None) -> Path | None:
    """``Settings.cache_dir``, or the user cache folder; None when disabled by ``off``."""
    chosen = (settings or current()).cache_dir
    if chosen:
        return None if chosen.strip().lower() in _OFF else Path(chosen).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam-ms")) / "embeddings"


def image_key(image: np.ndarray, model: str, extra: tuple = ()) -> str:
    """Hex key of (exact model input, model id, extra)."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"v{FORMAT_VERSION}|{image.dtype.str}|{image.shape}|".encode())
    digest.update(memoryview(image).cast("B"))
    digest.update(f"|{model}|{extra!r}".encode())
    return digest.hexdigest()


def model_id(model_type: str, checkpoint: str | os.PathLike | None) -> str:
    """Identity of a model's weights: type + resolved checkpoint path, size and mtime."""
    if checkpoint is None:
        return f"{model_type}:none"
    path = Path(checkpoint).expanduser().resolve()
    stat = path.stat()
    return f"{model_type}:{path}:{stat.st_size}:{stat.st_mtime_ns}"


class EmbeddingCache:
    """Memory LRU plus optional disk store of :class:`ImageEmbedding` records.

    Args:
        cache_dir: disk folder; None = :func:`default_cache_dir`; False disables the disk.
        max_items: embeddings kept in memory (vit_h/b: 4 MB each).
        max_disk_bytes: the oldest files are removed beyond this total.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None | bool = None,
        max_items: int = 16,
        max_disk_bytes: int = 2 << 30,
    ) -> None:
        if cache_dir is None or cache_dir is True:
            folder = default_cache_dir()
        elif cache_dir is False:
            folder = None
        else:
            folder = Path(cache_dir).expanduser()
        self.cache_dir: Path | None = folder
        self.max_items = max(1, int(max_items))
        self.max_disk_bytes = int(max_disk_bytes)
        self._memory: OrderedDict[str, ImageEmbedding] = OrderedDict()

    key = staticmethod(image_key)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self._path(key) is not None and self._path(key).is_file())

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.npz"

    # ----------------------------------------------------------------- reading
    def get(self, key: str, model: str) -> ImageEmbedding | None:
        """The embedding stored under ``key`` for ``model``, or None."""
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        emb = self._read(path, key, model)
        if emb is None:
            _remove(path)
            return None
        _touch(path)
        self._remember(key, emb)
        return emb

    def _read(self, path: Path, key: str, model: str) -> ImageEmbedding | None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                version = int(npz["version"])
                stored_key, stored_model = str(npz["key"]), str(npz["model"])
                features = np.array(npz["features"], dtype=np.float32)
                original = tuple(int(v) for v in npz["original_size"])
                input_size = tuple(int(v) for v in npz["input_size"])
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable cached embedding %s: %s", path, exc)
            return None
        if version != FORMAT_VERSION or stored_key != key or stored_model != model:
            logger.info("ignoring stale cached embedding %s", path)
            return None
        if features.ndim != 4 or features.shape[0] < 1 or len(original) != 2:
            return None
        if len(input_size) != 2 or not np.isfinite(features).all():
            return None
        return ImageEmbedding(features, original, input_size)

    # ----------------------------------------------------------------- writing
    def put(self, key: str, embedding: ImageEmbedding, model: str, persist: bool = True) -> None:
        """Store an embedding; ``persist=False`` keeps it in memory only."""
        self._remember(key, embedding)
        path = self._path(key)
        if not persist or path is None:
            return
        try:
            self._write(path, key, embedding, model)
            self._prune()
        except OSError as exc:  # a full or read-only disk must not break segmentation
            logger.warning("could not write embedding cache %s: %s", path, exc)

    def _write(self, path: Path, key: str, embedding: ImageEmbedding, model: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    version=np.int64(FORMAT_VERSION),
                    key=np.str_(key),
                    model=np.str_(model),
                    features=np.asarray(embedding.features, np.float32),
                    original_size=np.asarray(embedding.original_size, np.int64),
                    input_size=np.asarray(embedding.input_size, np.int64),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove(Path(tmp))
            raise

    def _remember(self, key: str, embedding: ImageEmbedding) -> None:
        self._memory[key] = embedding
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _prune(self) -> None:
        """Remove the least recently used files beyond ``max_disk_bytes``."""
        if self.cache_dir is None:
            return
        files = []
        for p in self.cache_dir.glob("*.npz"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_disk_bytes:
                break
            _remove(p)
            total -= size

    def clear(self, disk: bool = False) -> None:
        """Forget the memory entries (and delete the disk files when ``disk``)."""
        self._memory.clear()
        if disk and self.cache_dir is not None and self.cache_dir.is_dir():
            for p in self.cache_dir.glob("*.npz"):
                _remove(p)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


__all__ = ["EmbeddingCache", "default_cache_dir", "image_key", "model_id"]
