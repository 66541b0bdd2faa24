"""Convert Meta's PyTorch SAM checkpoints (``.pth``) to MindSpore (``.ckpt``) without torch.

Reading: a ``.pth`` written by ``torch.save`` (torch >= 1.6) is a zip archive holding
``<top>/data.pkl`` (the pickled object) and ``<top>/data/<key>`` (raw tensor storages).
:func:`load_pth` unpickles ``data.pkl`` with an unpickler that resolves only the globals
tensor data needs and turns every tensor into a numpy array; anything else (``os.system``,
arbitrary classes) is refused before it is called. Legacy (pre-1.6) files are refused.

Converting: :func:`convert` reads the state dict, works out the model size from the
parameter shapes (or takes ``model_type``), checks every key and shape against that size,
and writes ``<name>.ckpt`` atomically with the size arguments stored inside (see
:mod:`napari_sam_ms.checkpoint`).

Command line (the model card's form)::

    python -m napari_sam_ms.convert_weight --torch_path path/sam_vit_b_01ec64.pth
"""

from __future__ import annotations

import argparse
import inspect
import logging
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

from .build_sam import CONFIGS, _build_sam, normalize_model_type
from .checkpoint import check_param_shapes, save_checkpoint

PathLike = str | os.PathLike

logger = logging.getLogger(__name__)

# Meta's non-persistent buffers; accepted (and dropped) if a checkpoint carries them.
PIXEL_BUFFERS = {
    "pixel_mean": (123.675, 116.28, 103.53),
    "pixel_std": (58.395, 57.12, 57.375),
}

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
        raise ValueError(f"{path} is damaged or truncated ({exc}); download it again") from None


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


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth`` state dict as ``name -> numpy array``.

    A dict wrapping the state dict under ``model``/``state_dict``/``model_state_dict`` is
    unwrapped, and a ``module.`` prefix (DataParallel) is stripped.
    """
    obj = load_pth(path)
    for _ in range(2):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if inner:
                obj = inner[0]
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def read_sam_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """A SAM state dict from a ``.pth``: float32 arrays, pixel buffers checked and dropped."""
    state = read_state_dict(path)
    for name, standard in PIXEL_BUFFERS.items():
        value = state.pop(name, None)
        if value is None:
            continue
        flat = np.ravel(value).astype(np.float64)
        if flat.shape != (3,) or not np.allclose(flat, standard, atol=1e-3):
            raise ValueError(
                f"{path}: {name} is {flat.tolist()}, not SAM's {list(standard)}; "
                "this port supports only the standard normalisation"
            )
    return {k: _as_float32(v) for k, v in state.items()}


def _as_float32(value: np.ndarray) -> np.ndarray:
    """Cast floating arrays to float32 (the model's dtype); leave others alone."""
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


# ---------------------------------------------------------------------------------------
# Model sizes from shapes
# ---------------------------------------------------------------------------------------

_SIZE_ARGS = (
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "encoder_global_attn_indexes",
)


def full_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """All size arguments of ``_build_sam``: ``cfg`` completed with its defaults."""
    params = inspect.signature(_build_sam).parameters
    out: dict[str, Any] = {}
    for name, param in params.items():
        if name == "checkpoint":
            continue
        if name in cfg:
            out[name] = cfg[name]
        elif param.default is inspect.Parameter.empty:
            raise ValueError(f"size argument {name!r} is missing from {dict(cfg)}")
        else:
            out[name] = param.default
    unknown = set(cfg) - set(out)
    if unknown:
        raise ValueError(f"unknown size arguments {sorted(unknown)}")
    out["encoder_global_attn_indexes"] = tuple(int(i) for i in out["encoder_global_attn_indexes"])
    return out


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every SAM parameter for a config, without building the model."""
    c = full_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    shapes.update(_encoder_shapes(c))
    shapes.update(_prompt_encoder_shapes(c))
    shapes.update(_decoder_shapes(c))
    return shapes


def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _norm(name: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _encoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    e, patch = c["encoder_embed_dim"], c["patch_size"]
    grid = c["image_size"] // patch
    head_dim = e // c["encoder_num_heads"]
    out_ch = c["prompt_embed_dim"]
    pre = "image_encoder"
    s: dict[str, tuple[int, ...]] = {
        f"{pre}.pos_embed": (1, grid, grid, e),
        f"{pre}.patch_embed.proj.weight": (e, 3, patch, patch),
        f"{pre}.patch_embed.proj.bias": (e,),
    }
    for i in range(c["encoder_depth"]):
        b = f"{pre}.blocks.{i}"
        side = grid if i in c["encoder_global_attn_indexes"] else c["window_size"]
        s.update(_norm(f"{b}.norm1", e))
        s[f"{b}.attn.rel_pos_h"] = (2 * side - 1, head_dim)
        s[f"{b}.attn.rel_pos_w"] = (2 * side - 1, head_dim)
        s.update(_linear(f"{b}.attn.qkv", 3 * e, e))
        s.update(_linear(f"{b}.attn.proj", e, e))
        s.update(_norm(f"{b}.norm2", e))
        s.update(_linear(f"{b}.mlp.lin1", 4 * e, e))
        s.update(_linear(f"{b}.mlp.lin2", e, 4 * e))
    s[f"{pre}.neck.0.weight"] = (out_ch, e, 1, 1)
    s.update(_norm(f"{pre}.neck.1", out_ch))
    s[f"{pre}.neck.2.weight"] = (out_ch, out_ch, 3, 3)
    s.update(_norm(f"{pre}.neck.3", out_ch))
    return s


def _prompt_encoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    dim, m = c["prompt_embed_dim"], c["mask_in_chans"]
    pre = "prompt_encoder"
    s: dict[str, tuple[int, ...]] = {
        f"{pre}.pe_layer.positional_encoding_gaussian_matrix": (2, dim // 2),
    }
    for i in range(4):
        s[f"{pre}.point_embeddings.{i}.weight"] = (1, dim)
    s[f"{pre}.not_a_point_embed.weight"] = (1, dim)
    ds = f"{pre}.mask_downscaling"
    s.update({f"{ds}.0.weight": (m // 4, 1, 2, 2), f"{ds}.0.bias": (m // 4,)})
    s.update(_norm(f"{ds}.1", m // 4))
    s.update({f"{ds}.3.weight": (m, m // 4, 2, 2), f"{ds}.3.bias": (m,)})
    s.update(_norm(f"{ds}.4", m))
    s.update({f"{ds}.6.weight": (dim, m, 1, 1), f"{ds}.6.bias": (dim,)})
    s[f"{pre}.no_mask_embed.weight"] = (1, dim)
    return s


def _attention(name: str, dim: int, downsample: int) -> dict[str, tuple[int, ...]]:
    inner = dim // downsample
    s: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj"):
        s.update(_linear(f"{name}.{proj}", inner, dim))
    s.update(_linear(f"{name}.out_proj", dim, inner))
    return s


def _mlp(name: str, dims: Sequence[int]) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        s.update(_linear(f"{name}.layers.{i}", n_out, n_in))
    return s


def _decoder_shapes(c: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    dim, mlp_dim, hidden = c["prompt_embed_dim"], c["decoder_mlp_dim"], c["iou_head_hidden_dim"]
    pre = "mask_decoder"
    t = f"{pre}.transformer"
    s: dict[str, tuple[int, ...]] = {}
    for i in range(2):
        layer = f"{t}.layers.{i}"
        s.update(_attention(f"{layer}.self_attn", dim, 1))
        s.update(_norm(f"{layer}.norm1", dim))
        s.update(_attention(f"{layer}.cross_attn_token_to_image", dim, 2))
        s.update(_norm(f"{layer}.norm2", dim))
        s.update(_linear(f"{layer}.mlp.lin1", mlp_dim, dim))
        s.update(_linear(f"{layer}.mlp.lin2", dim, mlp_dim))
        s.update(_norm(f"{layer}.norm3", dim))
        s.update(_norm(f"{layer}.norm4", dim))
        s.update(_attention(f"{layer}.cross_attn_image_to_token", dim, 2))
    s.update(_attention(f"{t}.final_attn_token_to_image", dim, 2))
    s.update(_norm(f"{t}.norm_final_attn", dim))
    s[f"{pre}.iou_token.weight"] = (1, dim)
    s[f"{pre}.mask_tokens.weight"] = (4, dim)
    up = f"{pre}.output_upscaling"
    s.update({f"{up}.0.weight": (dim, dim // 4, 2, 2), f"{up}.0.bias": (dim // 4,)})
    s.update(_norm(f"{up}.1", dim // 4))
    s.update({f"{up}.3.weight": (dim // 4, dim // 8, 2, 2), f"{up}.3.bias": (dim // 8,)})
    for i in range(4):
        s.update(_mlp(f"{pre}.output_hypernetworks_mlps.{i}", (dim, dim, dim, dim // 8)))
    s.update(_mlp(f"{pre}.iou_prediction_head", (dim, hidden, hidden, 4)))
    return s


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Size arguments readable from parameter shapes.

    ``decoder_num_heads`` does not change any shape and is left out; the window size is
    unknown (and unused) when every block attends globally.
    """
    try:
        e, _, patch, _ = shapes["image_encoder.patch_embed.proj.weight"]
        grid = shapes["image_encoder.pos_embed"][1]
        depth = 1 + max(
            int(m.group(1)) for k in shapes if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
        )
        sides = [
            (shapes[f"image_encoder.blocks.{i}.attn.rel_pos_h"][0] + 1) // 2 for i in range(depth)
        ]
        head_dim = shapes["image_encoder.blocks.0.attn.rel_pos_h"][1]
        if not head_dim or e % head_dim:
            raise ValueError(f"head size {head_dim} does not divide embedding size {e}")
        cfg = dict(
            encoder_embed_dim=e,
            encoder_depth=depth,
            encoder_num_heads=e // head_dim,
            encoder_global_attn_indexes=tuple(i for i, s in enumerate(sides) if s == grid),
            image_size=grid * patch,
            patch_size=patch,
            prompt_embed_dim=shapes["image_encoder.neck.0.weight"][0],
            mask_in_chans=shapes["prompt_encoder.mask_downscaling.3.weight"][0],
            decoder_mlp_dim=shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0],
            iou_head_hidden_dim=shapes["mask_decoder.iou_prediction_head.layers.0.weight"][0],
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"this does not look like a SAM state dict ({exc!r})") from None
    windows = [s for s in sides if s != grid]
    if windows:
        cfg["window_size"] = windows[0]
    return {k: tuple(v) if isinstance(v, tuple) else int(v) for k, v in cfg.items()}


def detect_model_type(shapes: Mapping[str, Sequence[int]]) -> tuple[str, dict[str, Any]]:
    """The name in ``CONFIGS`` whose sizes match the shapes, or ``"custom"``, and the config.

    For ``custom``, sizes no shape reveals take ``_build_sam``'s defaults (Meta's values;
    ``decoder_num_heads=8``).
    """
    derived = config_from_shapes(shapes)
    for name, cfg in CONFIGS.items():
        full = full_config(cfg)
        if all(full[k] == v for k, v in derived.items()):
            return name, full
    return "custom", full_config(derived)


def resolve_config(
    shapes: Mapping[str, Sequence[int]], model_type: str | None
) -> tuple[str, dict[str, Any]]:
    """The (model type, full config) to convert for: given, or detected from shapes."""
    if model_type is None:
        return detect_model_type(shapes)
    name = normalize_model_type(model_type)
    name = "vit_h" if name == "default" else name
    return name, full_config(CONFIGS[name])


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------


def default_output(torch_path: PathLike) -> Path:
    """``path/name.pth`` -> ``path/name.ckpt``."""
    return Path(torch_path).with_suffix(".ckpt")


def convert(
    torch_path: PathLike, out_path: PathLike | None = None, model_type: str | None = None
) -> Path:
    """Convert a Meta SAM ``.pth`` to a MindSpore ``.ckpt`` and return its path.

    Args:
        torch_path: the ``.pth`` written by ``torch.save`` (official checkpoints included).
        out_path: where to write; default ``<torch_path without suffix>.ckpt`` beside it.
        model_type: ``vit_b``/``vit_l``/``vit_h``/``tiny`` (or ``sam_vit_b``); detected from
            the shapes when None.

    Raises:
        FileNotFoundError: ``torch_path`` does not exist.
        ValueError: unreadable file, or keys/shapes that do not fit the model (all named).
    """
    return _convert(torch_path, out_path, model_type)[0]


def _convert(
    torch_path: PathLike, out_path: PathLike | None, model_type: str | None
) -> tuple[Path, str]:
    """:func:`convert`, also returning the model type written."""
    state = read_sam_state_dict(torch_path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    name, config = resolve_config(shapes, model_type)
    if name == "custom":
        logger.warning("%s has a custom size; decoder_num_heads assumed to be 8", torch_path)
    check_param_shapes(shapes, expected_shapes(config), source=f"{torch_path} ({name})")
    out = Path(out_path) if out_path is not None else default_output(torch_path)
    save_checkpoint(state, out, config=config)
    logger.info("converted %s to %s (model type %s)", torch_path, out, name)
    return out, name


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a PyTorch SAM checkpoint (.pth) to MindSpore (.ckpt)."
    )
    parser.add_argument("--torch_path", "--torch-path", required=True, help="input .pth file")
    parser.add_argument(
        "--model_type",
        "--model-type",
        default=None,
        help=f"one of {sorted(CONFIGS)} (default: detected from the weights)",
    )
    parser.add_argument("--out", default=None, help="output .ckpt (default: beside the input)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success)."""
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return int(exc.code or 0)
    try:
        out, name = _convert(args.torch_path, args.out, args.model_type)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (model type {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
