"""Read PyTorch ``.pth`` checkpoints without torch.

A ``.pth`` written by ``torch.save`` (torch >= 1.6) is a zip archive holding
``<top>/data.pkl`` (the pickled object) and ``<top>/data/<key>`` (raw tensor storages).
:func:`load_pth` unpickles ``data.pkl`` with an unpickler that resolves only the globals
tensor data needs and turns every tensor into a numpy array; anything else (``os.system``,
arbitrary classes) is refused before it is called. Legacy (pre-1.6) files are refused.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike

# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")

# ---------------------------------------------------------------------------------------
# Torch-free reading of .pth files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for ``torch.<X>Storage``: the element type of a raw storage."""

    name: str
    dtype: np.dtype
    bfloat16: bool = False


_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, np.dtype(code), bfloat16=name == "BFloat16Storage")
    for name, code in {
        "DoubleStorage": "float64",
        "FloatStorage": "float32",
        "HalfStorage": "float16",
        "BFloat16Storage": "uint16",  # raw bits; widened to float32 after slicing
        "LongStorage": "int64",
        "IntStorage": "int32",
        "ShortStorage": "int16",
        "CharStorage": "int8",
        "ByteStorage": "uint8",
        "BoolStorage": "bool",
        "ComplexFloatStorage": "complex64",
        "ComplexDoubleStorage": "complex128",
        "UntypedStorage": "uint8",
    }.items()
}


@dataclass(frozen=True, slots=True)
class _Storage:
    """A storage read from the archive: a flat array of its element type."""

    data: np.ndarray
    bfloat16: bool


@dataclass(frozen=True, slots=True)
class _TensorType:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""

    name: str


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32."""
    wide = bits.astype(np.uint32).reshape(-1)
    wide <<= 16
    return wide.view(np.float32).reshape(bits.shape)


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    """Validate a size/stride tuple coming from the pickle."""
    if not isinstance(values, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise ValueError(f"malformed tensor {what}: {values!r}")
    return tuple(values)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: Sequence[int],
    stride: Sequence[int],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """numpy version of ``torch._utils._rebuild_tensor_v2`` with bounds checks."""
    if not isinstance(storage, _Storage):
        raise ValueError("malformed tensor: its storage is not a tensor storage")
    size = _check_ints(size, "size")
    stride = _check_ints(stride, "stride")
    (offset,) = _check_ints((storage_offset,), "storage offset")
    if len(size) != len(stride):
        raise ValueError(f"malformed tensor: size {size} and stride {stride} differ in length")
    flat = storage.data
    if 0 in size:
        out = np.empty(size, flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size:
            raise ValueError(f"malformed tensor: view {size}/{stride} overruns its storage")
        count = int(np.prod(size))
        if stride == _contiguous_strides(size):
            out = flat[offset : offset + count].reshape(size)  # shares the storage, no copy
        else:
            view = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride]
            )
            out = view.copy()
    return _bf16_to_float32(out) if storage.bfloat16 else out


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous tensor of ``size``."""
    strides, acc = [], 1
    for n in reversed(size):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a parameter is just its data here."""
    return data


def _rebuild_parameter_with_state(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any, state: Any
) -> np.ndarray:
    """``torch._utils._rebuild_parameter_with_state``: python attributes are dropped."""
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> np.ndarray:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors and parameters only."""
    if func not in _REBUILDERS or not isinstance(new_type, _TensorType):
        raise ValueError("refusing to rebuild a tensor subclass: not plain tensor data")
    return func(*args)


_REBUILDERS = (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state)

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorType("Parameter"),
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): st for name, st in _STORAGE_TYPES.items()},
    **{("torch.storage", name): st for name, st in _STORAGE_TYPES.items()},
}


class _TensorUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays from the archive and refuses any other global."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, swap: bool) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._swap = swap
        self._cache: dict[tuple[str, str], _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: not tensor data"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        cache_key = (key, storage_type.name)
        if cache_key not in self._cache:
            self._cache[cache_key] = self._read_storage(key, storage_type, numel)
        return self._cache[cache_key]

    def _read_storage(self, key: str, storage_type: _StorageType, numel: Any) -> _Storage:
        """Read ``data/<key>`` into a flat array of the storage's element type."""
        if not re.fullmatch(r"[0-9A-Za-z_]+", key):
            raise pickle.UnpicklingError(f"malformed storage key {key!r:.40}")
        dtype = storage_type.dtype
        try:
            info = self._archive.getinfo(f"{self._prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
        if info.file_size % dtype.itemsize or (
            isinstance(numel, int) and numel * dtype.itemsize > info.file_size
        ):
            raise pickle.UnpicklingError(f"storage {key} has {info.file_size} bytes, too few")
        data = np.empty(info.file_size // dtype.itemsize, dtype)
        _read_into(self._archive, info, data)
        if self._swap:
            data.byteswap(inplace=True)
        return _Storage(data, storage_type.bfloat16)


def _read_into(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: np.ndarray) -> None:
    """Fill ``out`` with the bytes of one archive member."""
    buf = memoryview(out.reshape(-1).view(np.uint8))
    with archive.open(info) as fh:
        pos = 0
        while pos < len(buf):
            n = fh.readinto(buf[pos:])
            if not n:
                raise pickle.UnpicklingError(f"{info.filename} is truncated")
            pos += n


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """The top folder of a torch zip archive (``archive/``, ``<name>/``, ...)."""
    names = archive.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        if any(n.endswith("/constants.pkl") for n in names):
            raise ValueError(
                f"{path} is a TorchScript archive; save the model's state_dict instead"
            )
        raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    return pkls[0][: -len("data.pkl")]


def _legacy_message(path: Path) -> str:
    return (
        f"{path} uses PyTorch's legacy (pre-1.6) format, which is not supported; re-save it "
        "with a recent torch: torch.save(torch.load(old_path), new_path)"
    )


def load_pth(path: PathLike) -> Any:
    """Unpickle a ``torch.save`` file without torch; tensors come back as numpy arrays.

    Only tensor data is rebuilt (``_rebuild_tensor_v2``, parameters, typed storages,
    ``OrderedDict``); any other global in the pickle raises :class:`ValueError` naming it,
    before anything is called. Strided views are copied; contiguous tensors that shared a
    storage in torch share memory here too (as with ``torch.load``); bfloat16 becomes
    float32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":
        raise ValueError(
            _legacy_message(path)
            if magic[:1] == b"\x80"
            else f"{path} is not a PyTorch checkpoint (not a zip archive)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            return _load_archive(archive, path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"{path} ({path.stat().st_size} bytes) is a PyTorch checkpoint that is damaged or "
            f"truncated ({exc}), e.g. an interrupted download or copy: download or copy it again"
        ) from None


def _load_archive(archive: zipfile.ZipFile, path: Path) -> Any:
    """Unpickle ``data.pkl`` of an opened torch archive."""
    prefix = _archive_prefix(archive, path)
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise ValueError(f"{path}: unknown byte order {byteorder!r}")
    with archive.open(f"{prefix}data.pkl") as fh:
        unpickler = _TensorUnpickler(fh, archive, prefix, swap=byteorder != sys.byteorder)
        try:
            return unpickler.load()
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except (ValueError, EOFError, AttributeError, IndexError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: malformed data.pkl ({exc})") from None


def unwrap_state_dict(obj: Any) -> dict[str, np.ndarray] | None:
    """The ``name -> array`` state dict held by an unpickled object, or None.

    A dict wrapping it under ``model``/``state_dict``/``model_state_dict``/``module`` is
    unwrapped (twice at most), and a ``module.`` prefix (DataParallel) is stripped.
    """
    for _ in range(2):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if inner:
                obj = inner[0]
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        return None
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth`` state dict as ``name -> numpy array`` (see :func:`unwrap_state_dict`)."""
    state = unwrap_state_dict(load_pth(path))
    if state is None:
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty ``str -> numpy array`` mapping."""
    return isinstance(obj, Mapping) and _is_state_dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )
