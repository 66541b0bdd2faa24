"""The manifest of a batch run: what is done, so that a rerun resumes.

``<out>/napari-sam-ms-manifest.json`` records, per input (by absolute path): its size and
modification time, the run's fingerprint (model and options, :func:`fingerprint`), the
status (``done`` or ``failed``), the files written (each with size and modification time)
and the error of a failed item. Only the process that drives the run writes it, after each
finished item, atomically (a temporary file, then ``os.replace``), so an interrupted run
leaves the manifest of the items finished so far. With many quick items the writes are
spaced so that writing the manifest takes at most :data:`WRITE_SHARE` of the run's time
(the items recorded in between are written by the next write, at the latest by
:meth:`Manifest.flush` when the run ends or is interrupted).

An item counts as done when the manifest says so for the same fingerprint, the input is
unchanged and every output is there unchanged; a rerun skips it (``--overwrite`` redoes it).
Anything else (a failed item, changed options, a replaced output) is segmented again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

NAME = "napari-sam-ms-manifest.json"
VERSION = 1
WRITE_SHARE = 0.05  # at most this share of a run's time goes to writing its manifest
_NOT_RESULTS = frozenset(
    {"images", "out", "overwrite", "skip_existing", "no_progress", "workers", "scheduler",
     "command"}
)  # fmt: skip


def fingerprint(spec: Any, options: Mapping[str, Any]) -> str:
    """A hash of what decides an item's outputs: the model (name, checkpoint and its sha256,
    device) and every option except those about the run itself (inputs, --out, --overwrite,
    progress, workers)."""
    chosen = {k: v for k, v in options.items() if k not in _NOT_RESULTS}
    model = {"model": spec.model, "checkpoint": spec.checkpoint, "sha256": spec.sha256,
             "device": spec.device}  # fmt: skip
    text = json.dumps({"model": model, "options": chosen}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


class Manifest:
    """The manifest of one output folder (read at start, written after each item)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / NAME
        self.items: dict[str, dict[str, Any]] = {}
        self.problem: str | None = None  # why an existing manifest was not used
        self._dirty = False
        self._last = (0.0, 0.0)  # (end, duration) of the last write, perf_counter seconds
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                if doc.get("version") != VERSION:
                    raise ValueError(f"version {doc.get('version')!r}")
                self.items = dict(doc["items"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self.problem = f"{self.path}: not a manifest this version reads ({exc}); ignored"

    @staticmethod
    def key(path: Path) -> str:
        """The manifest's key of an input: its absolute path."""
        return str(Path(path).resolve())

    def is_done(self, path: Path, print_: str) -> bool:
        """Whether ``path`` was done with fingerprint ``print_``, and neither it nor any of
        its outputs changed since."""
        entry = self.items.get(self.key(path))
        if not entry or entry.get("status") != "done" or entry.get("fingerprint") != print_:
            return False
        if _stat(Path(path)) != entry.get("input"):
            return False
        outputs = entry.get("outputs") or []
        return bool(outputs) and all(
            _stat(Path(o["path"])) == {"size": o["size"], "mtime_ns": o["mtime_ns"]}
            for o in outputs
        )

    def written_by(self, path: Path, print_: str, sidecar: Path) -> list[Path]:
        """The outputs of ``path`` a run with fingerprint ``print_`` wrote whole but did not
        record (stopped between an item and its manifest write), else []. The sidecar is
        written last and atomically: it names the run, the input's sha256 (inputs without
        one, such as zarr stores, are never adopted) and the label image, which must not be
        newer than it (a file put there since is the user's)."""
        from ..weights import sha256_of

        try:
            doc = json.loads(Path(sidecar).read_text(encoding="utf-8"))
            labels = Path(sidecar).parent / doc["labels"]["file"]
            digest = doc["input"]["sha256"]
            whole = (
                doc.get("batch_fingerprint") == print_
                and digest is not None
                and labels.stat().st_mtime_ns <= Path(sidecar).stat().st_mtime_ns
                and sha256_of(Path(path)) == digest
            )
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [labels, Path(sidecar)] if whole else []

    def record(
        self,
        path: Path,
        print_: str,
        *,
        files: Iterable[Path] = (),
        error: str | None = None,
    ) -> None:
        """Record one finished item (done when ``error`` is None) and write the manifest."""
        outputs = []
        for f in files:
            st = _stat(Path(f))
            if st is not None:
                outputs.append({"path": str(Path(f).resolve()), **st})
        self.items[self.key(path)] = {
            "path": str(path),
            "input": _stat(Path(path)),
            "fingerprint": print_,
            "status": "failed" if error is not None else "done",
            "outputs": outputs,
            "error": error,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        self._dirty = True
        end, took = self._last
        if time.perf_counter() - end >= took / WRITE_SHARE:
            self.save()

    def flush(self) -> None:
        """Write what was recorded since the last write, if anything."""
        if self._dirty:
            self.save()

    def save(self) -> None:
        """Write the manifest atomically (temporary file beside it, then ``os.replace``)."""
        from ..utils.io import write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        begin = time.perf_counter()
        doc = {"version": VERSION, "items": self.items}
        write_json(self.path, doc, overwrite=True)
        self._dirty = False
        end = time.perf_counter()
        self._last = (end, end - begin)

    def counts(self) -> dict[str, int]:
        """How many items are done and failed."""
        states = [e.get("status") for e in self.items.values()]
        return {s: states.count(s) for s in ("done", "failed")}
