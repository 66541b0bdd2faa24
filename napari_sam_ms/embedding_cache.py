"""Image embeddings cached in memory (LRU) and on disk (``.npz`` and zarr), no Qt.

An embedding is found again by a key made of

- a content hash (blake2b) of the exact model input: the uint8 RGB plane, its shape and dtype
  (so the contrast limits used to make it are part of the key),
- the model id (type + weights identity, see :func:`model_id`),
- an optional ``extra`` tuple (slice index, tile box...) for callers that want it.

Disk entries are written atomically (temporary file in the same folder, then ``os.replace``),
carry a format version, their key, the model id and sizes, and are checked on reading: a
stale, corrupt or mismatching file is ignored and removed. Folder: ``Settings.cache_dir``
(``NAPARI_SAM_MS_CACHE``; ``off``: none), else ``pooch.os_cache("napari-sam-ms")/embeddings``.

*Parts* of a large image (tiles, slices of a volume) are kept in zarr instead
(:meth:`EmbeddingCache.get_part` / :meth:`EmbeddingCache.put_part`): one zarr group per
(image identity, model id) under ``<cache_dir>/parts/``, one array per *kind* of part (e.g.
``tiles_896x896_h64x64_z1`` or ``slices``) whose grid is indexed by the part's ``extra``
(``(row, col)`` of a tile, ``(z,)`` of a slice, ``(z, row, col)`` of a tile of a slice), and
one chunk per part. The group's attributes hold :data:`PARTS_LAYOUT`, the image identity and
the model id; a group of another layout is deleted and rebuilt. Each part's features chunk
is written first (zarr writes a chunk to a temporary file and renames it), then a small
completion record in a second array: a done flag, a blake2b checksum of the features and
the sizes. A part without its record (the process was killed between the two writes), with
a checksum that does not match (a corrupt or half-written chunk) or that cannot be decoded is
recomputed, never trusted. The groups' total size is capped (``max_part_bytes``); the least
recently used groups are deleted first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .predictor import ImageEmbedding
from .settings import Settings, current

FORMAT_VERSION = 1
PARTS_LAYOUT = 1  # version of the zarr layout of parts (tiles, slices)
_RECORD = 6  # done flag, checksum, original h, w, input h, w
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
        max_part_bytes: the least recently used zarr groups of parts (tiles, slices) are
            removed beyond this total (None: ``Settings.cache_parts_gb``).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None | bool = None,
        max_items: int = 16,
        max_disk_bytes: int = 2 << 30,
        max_part_bytes: int | None = None,
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
        gb = current().cache_parts_gb if max_part_bytes is None else max_part_bytes / (1 << 30)
        self.max_part_bytes = int(gb * (1 << 30))
        self._memory: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._arrays: dict[tuple[str, str], tuple] = {}  # (group, kind) -> (features, records)
        self._part_bytes: int | None = None  # running estimate of the parts' disk size

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
                early = np.array(npz["early"], np.float32) if "early" in npz.files else None
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable cached embedding %s: %s", path, exc)
            return None
        if version != FORMAT_VERSION or stored_key != key or stored_model != model:
            logger.info("ignoring stale cached embedding %s", path)
            return None
        bad = features.ndim != 4 or features.shape[0] < 1 or len(original) != 2
        if bad or len(input_size) != 2 or not np.isfinite(features).all():
            return None
        return ImageEmbedding(features, original, input_size, early)

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
                    **({} if embedding.early is None else {"early": embedding.early}),
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
        self._arrays.clear()
        if disk and self.cache_dir is not None and self.cache_dir.is_dir():
            for p in self.cache_dir.glob("*.npz"):
                _remove(p)
            shutil.rmtree(self.cache_dir / "parts", ignore_errors=True)
            self._part_bytes = None

    # ------------------------------------------------------------------ parts
    def part_key(self, image_id: str, model: str, kind: str, index: tuple, grid: tuple = ()) -> str:
        """Memory key of one part (tile, slice) of an image in a grid of shape ``grid``."""
        where = (tuple(int(i) for i in index), tuple(int(g) for g in grid))
        text = f"p{PARTS_LAYOUT}|{image_id}|{model}|{kind}|{where}"
        return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()

    def _group_dir(self, image_id: str, model: str) -> Path | None:
        if self.cache_dir is None:
            return None
        name = hashlib.blake2b(f"{image_id}|{model}".encode(), digest_size=16).hexdigest()
        return self.cache_dir / "parts" / f"{name}.zarr"

    def get_part(
        self,
        image_id: str,
        model: str,
        kind: str,
        index: tuple[int, ...],
        grid_shape: tuple[int, ...],
    ) -> ImageEmbedding | None:
        """The embedding of part ``index`` of ``kind`` (grid ``grid_shape``), or None.

        Args:
            image_id: the image's content id (e.g. :meth:`PlaneSource.identity`).
            model: the model id (with the predictor's ``embedding_suffix``).
            kind: which parts, a zarr-safe name: ``tiles_<tile>_h<halo>_z<zoom>``, ``slices``...
            index: the part's position in its grid: (row, col), (z,), (z, row, col)...
            grid_shape: the grid's shape (same length as ``index``).
        """
        key = self.part_key(image_id, model, kind, index, grid_shape)
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        arrays = self._part_arrays(image_id, model, kind, grid_shape, None, create=False)
        if arrays is None:
            return None
        emb = _read_part(*arrays, tuple(index))
        if emb is not None:
            _touch(self._group_dir(image_id, model))  # type: ignore[arg-type]
            self._remember(key, emb)
        return emb

    def put_part(
        self,
        image_id: str,
        model: str,
        kind: str,
        index: tuple[int, ...],
        grid_shape: tuple[int, ...],
        embedding: ImageEmbedding,
        persist: bool = True,
    ) -> None:
        """Store the embedding of one part (see :meth:`get_part`); ``persist=False``: memory
        only. A disk that cannot be written is logged, never raised."""
        self._remember(self.part_key(image_id, model, kind, index, grid_shape), embedding)
        if not persist or self.cache_dir is None:
            return
        feats = np.ascontiguousarray(embedding.features, np.float32)
        group = self._group_dir(image_id, model)
        added = feats.nbytes + 64 + (0 if group.is_dir() else 2048)  # type: ignore[union-attr]
        try:
            arrays = self._part_arrays(image_id, model, kind, grid_shape, feats.shape, create=True)
            if arrays is None:
                return
            features, records = arrays
            where = tuple(int(i) for i in index)
            features[where] = feats  # zarr: temporary file, then rename
            sizes = (*embedding.original_size, *embedding.input_size)
            records[where] = np.array([1, _checksum(feats), *sizes], np.int64)  # completion
        except Exception as exc:  # a full or read-only disk must not break segmentation
            logger.warning("could not cache part %s %s on disk: %s", kind, index, exc)
            return
        _touch(group)  # type: ignore[arg-type]
        self._prune_parts(keep=group, added=added)

    def _part_arrays(self, image_id, model, kind, grid_shape, feat_shape, create: bool):
        """The (features, records) zarr arrays of ``kind``, opened once; None if absent."""
        group_dir = self._group_dir(image_id, model)
        if group_dir is None:
            return None
        cached = self._arrays.get((str(group_dir), kind))
        grid_shape = tuple(int(g) for g in grid_shape)
        if cached is not None and group_dir.is_dir():
            features, records = cached
            fits = feat_shape is None or tuple(features.shape[len(grid_shape) :]) == feat_shape
            if tuple(records.shape[:-1]) == grid_shape and fits:
                return cached
        self._arrays.pop((str(group_dir), kind), None)
        import zarr

        try:
            group = self._open_group(zarr, group_dir, image_id, model, create)
            if group is None:
                return None
            names = set(group.array_keys())
            if f"{kind}.features" in names and f"{kind}.records" in names:
                features, records = group[f"{kind}.features"], group[f"{kind}.records"]
                same_grid = tuple(records.shape[:-1]) == grid_shape
                fits = feat_shape is None or tuple(features.shape[len(grid_shape) :]) == feat_shape
                if same_grid and fits:
                    self._arrays[(str(group_dir), kind)] = (features, records)
                    return features, records
                if not create:
                    return None
            elif not create or feat_shape is None:
                return None
            ones = (1,) * len(grid_shape)
            features, records = (
                group.create_array(
                    f"{kind}.{name}",
                    shape=grid_shape + shape,
                    chunks=ones + shape,
                    dtype=dtype,
                    fill_value=0,
                    overwrite=True,
                )  # fmt: skip
                for name, shape, dtype in (
                    ("features", tuple(feat_shape), "float32"),
                    ("records", (_RECORD,), "int64"),
                )
            )
        except Exception as exc:
            logger.warning("ignoring unreadable embedding cache group %s: %s", group_dir, exc)
            return None
        self._arrays[(str(group_dir), kind)] = (features, records)
        return features, records

    def _open_group(self, zarr, group_dir: Path, image_id: str, model: str, create: bool):
        """The group of (image, model); one of another layout or owner is rebuilt."""
        want = {"layout": PARTS_LAYOUT, "image": image_id, "model": model}
        if (group_dir / "zarr.json").is_file():
            try:
                group = zarr.open_group(store=str(group_dir), mode="r+")
                if all(group.attrs.get(k) == v for k, v in want.items()):
                    return group
            except Exception as exc:
                logger.info("rebuilding embedding cache group %s: %s", group_dir, exc)
            if not create:
                return None
            logger.info("rebuilding stale embedding cache group %s", group_dir)
            shutil.rmtree(group_dir, ignore_errors=True)
        elif not create:
            return None
        group = zarr.open_group(store=str(group_dir), mode="w")
        group.attrs.update(want)
        return group

    def _prune_parts(self, keep: Path | None, added: int) -> None:
        """Delete the least recently used groups beyond ``max_part_bytes`` (not ``keep``)."""
        if self._part_bytes is not None:
            self._part_bytes += added
            if self._part_bytes <= self.max_part_bytes:
                return
        root = self.cache_dir / "parts"  # type: ignore[operator]
        groups = []
        for g in root.glob("*.zarr") if root.is_dir() else []:
            try:
                groups.append((g.stat().st_mtime, _tree_bytes(g), g))
            except OSError:
                continue
        total = sum(size for _, size, _ in groups)
        for _, size, g in sorted(groups, key=lambda item: item[0]):
            if total <= self.max_part_bytes:
                break
            if keep is not None and g == keep:
                continue
            shutil.rmtree(g, ignore_errors=True)
            self._arrays = {k: v for k, v in self._arrays.items() if k[0] != str(g)}
            total -= size
        self._part_bytes = total


def _checksum(features: np.ndarray) -> int:
    """A signed 64-bit blake2b checksum of float32 features."""
    data = memoryview(np.ascontiguousarray(features, np.float32)).cast("B")
    return int(np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), "<i8")[0])


def _read_part(features, records, index: tuple[int, ...]) -> ImageEmbedding | None:
    """One part, only when its completion record is there and its checksum matches."""
    try:
        record = np.asarray(records[index], np.int64)
        if record.shape != (_RECORD,) or record[0] != 1:
            return None
        feats = np.asarray(features[index], np.float32)
    except Exception as exc:  # an undecodable chunk: recompute
        logger.warning("ignoring unreadable cached part %s: %s", index, exc)
        return None
    if _checksum(feats) != int(record[1]) or not np.isfinite(feats).all():
        logger.warning("ignoring cached part %s: its checksum does not match", index)
        return None
    h, w, ih, iw = (int(v) for v in record[2:])
    return ImageEmbedding(feats, (h, w), (ih, iw))


def _tree_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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


__all__ = ["PARTS_LAYOUT", "EmbeddingCache", "default_cache_dir", "image_key", "model_id"]
