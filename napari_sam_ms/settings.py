"""Every ``NAPARI_SAM_MS_*`` environment setting, read in one place into one frozen object.

:func:`current` reads the environment once per process (the first time it is asked) and
returns a :class:`Settings`; code below it takes a ``settings`` argument or asks
:func:`current`. Tests build a ``Settings(...)`` and pass it, or use :func:`override`.
:data:`VARIABLES` is the table the README's *Settings* section is written from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

_YES = {"1", "true", "yes", "on"}
_NO = {"0", "false", "no", "off"}


def parse_flag(name: str, text: str) -> bool:
    """A yes/no value: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    value = text.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError(f"{name}={text!r}: use 1 or 0 (also true/false, yes/no, on/off)")


def _parse_number(name: str, text: str, kind: type) -> int | float:
    try:
        return kind(text.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={text!r} is not {what}") from None


class Variable(NamedTuple):
    """One environment variable: the field it sets, its kind and what it means."""

    name: str
    field: str
    kind: type  # bool, int, float or str
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "NAPARI_SAM_MS_DEVICE",
        "device",
        str,
        "`CPU` (default), `GPU` or `Ascend`; also `napari_sam_ms.configure(device=...)`.",
    ),
    Variable("NAPARI_SAM_MS_DEVICE_ID", "device_id", int, "the GPU/Ascend card (default 0)."),
    Variable(
        "NAPARI_SAM_MS_ENCODER_GRAPHS",
        "encoder_graphs",
        bool,
        "`1` (CPU default) runs the image encoder as shared compiled stage graphs; `0` op by op.",
    ),
    Variable(
        "NAPARI_SAM_MS_STAGE_BLOCKS",
        "stage_blocks",
        int,
        "most encoder blocks in one graph (default 3; a stage also ends at a global block).",
    ),
    Variable(
        "NAPARI_SAM_MS_DECODER_GRAPHS",
        "decoder_graphs",
        bool,
        "`1` (CPU default) runs prompt encoder and mask decoder as compiled graphs; `0` op by op.",
    ),
    Variable(
        "NAPARI_SAM_MS_DECODE_CHUNK",
        "decode_chunk",
        int,
        "prompts run through the decoder's transformer at once (default 4): memory vs speed.",
    ),
    Variable(
        "NAPARI_SAM_MS_ATTN_CHUNK_MB",
        "attn_chunk_mb",
        float,
        "memory of one chunk of global-attention heads (default 64; 0 = all heads at once).",
    ),
    Variable(
        "NAPARI_SAM_MS_LAUNCH_BLOCKING",
        "launch_blocking",
        bool,
        "`1` (CPU default) synchronous kernel launch with MindSpore's host side in the calling "
        "thread; `0` off.",
    ),
    Variable(
        "NAPARI_SAM_MS_GRAPH_KERNEL",
        "graph_kernel",
        bool,
        "`1` (default) graph kernel fusion for the encoder and decoder graphs on CPU; `0` off.",
    ),
    Variable(
        "NAPARI_SAM_MS_JIT",
        "jit",
        bool,
        "`1` compiles every model part as its own graph (old path; vit_b exhausts memory).",
    ),
    Variable(
        "NAPARI_SAM_MS_WEIGHTS",
        "weights_dir",
        str,
        "folder for downloaded and converted weights (default: the OS cache folder).",
    ),
    Variable(
        "NAPARI_SAM_MS_WEIGHTS_URL",
        "weights_url",
        str,
        "replaces the download base URL (a mirror, or a test server).",
    ),
    Variable(
        "NAPARI_SAM_MS_CACHE",
        "cache_dir",
        str,
        "embedding cache folder (default: the OS cache folder); `off` disables it.",
    ),
    Variable(
        "NAPARI_SAM_MS_CACHE_GB",
        "cache_parts_gb",
        float,
        "disk space for tile and slice embeddings, in GB (default 8; the least recently used "
        "images' go first).",
    ),
    Variable(
        "NAPARI_SAM_MS_COMPILE_CACHE",
        "compile_cache",
        str,
        "folder for MindSpore's compiled kernels, reused by later processes (default: the OS "
        "cache folder); `off`: a temporary folder.",
    ),
    Variable(
        "NAPARI_SAM_MS_SYNC",
        "sync",
        bool,
        "`1` runs widget work inline instead of in thread workers (debugging, tests).",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The package's settings. ``None`` for the graph switches means "the device's default"
    (on for CPU, off for GPU/Ascend), resolved by :mod:`napari_sam_ms.runtime`."""

    device: str = "CPU"
    device_id: int = 0
    encoder_graphs: bool | None = None
    stage_blocks: int = 3
    decoder_graphs: bool | None = None
    decode_chunk: int = 4
    attn_chunk_mb: float = 64.0
    launch_blocking: bool = True
    graph_kernel: bool = True
    jit: bool = False
    weights_dir: str | None = None
    weights_url: str | None = None
    cache_dir: str | None = None
    cache_parts_gb: float = 8.0
    compile_cache: str | None = None
    sync: bool = False

    def __post_init__(self) -> None:
        if self.stage_blocks < 1:
            raise ValueError(f"stage_blocks must be at least 1, got {self.stage_blocks}")
        if self.decode_chunk < 1:
            raise ValueError(f"decode_chunk must be at least 1, got {self.decode_chunk}")
        if self.attn_chunk_mb < 0:
            raise ValueError(f"attn_chunk_mb must be 0 or more, got {self.attn_chunk_mb}")
        if self.cache_parts_gb <= 0:
            raise ValueError(f"cache_parts_gb must be more than 0, got {self.cache_parts_gb}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); unset or empty means default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            text = environ.get(var.name, "")
            if not text.strip():
                continue
            if var.kind is bool:
                values[var.field] = parse_flag(var.name, text)
            elif var.kind is str:
                values[var.field] = text.strip()
            else:
                values[var.field] = _parse_number(var.name, text, var.kind)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_current: list[Settings] = []


def current() -> Settings:
    """The process's settings: read from the environment the first time, then kept."""
    if not _current:
        _current.append(Settings.from_env())
    return _current[-1]


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[Settings]:
    """Make :func:`current` return changed settings inside the block (tests, scripts)."""
    changed = current().replace(**changes)
    _current.append(changed)
    try:
        yield changed
    finally:
        del _current[next(i for i, s in enumerate(_current) if s is changed)]


def readme_table() -> str:
    """The README's table of variables (a test keeps the README in step with it)."""
    rows = ["| variable | meaning |", "|---|---|"]
    rows += [f"| `{v.name}` | {v.help} |" for v in VARIABLES]
    return "\n".join(rows)


__all__ = ["VARIABLES", "Settings", "Variable", "current", "override", "parse_flag", "readme_table"]
