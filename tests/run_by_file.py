"""Run each test file in its own pytest process, one after another (the suite's command).

MindSpore keeps the memory of every graph it compiled and of its memory pool until the process
ends, so one process running all files grew past the machine's 24 GB. One process per file
bounds that to the largest file. Extra arguments go to every pytest call::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tests/run_by_file.py [-k x]

At the end a table gives each file's outcome, time and peak memory; the exit status is 0 only
if every file passed (pytest's "no tests collected", e.g. under ``-k``, counts as passed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).parent
NO_TESTS = 5  # pytest's exit status when a file has no selected tests


def run_file(path: Path, args: list[str]) -> tuple[int, float, float]:
    """Run one file; return (pytest's exit status, seconds, peak RSS in GB)."""
    start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "pytest", str(path), *args])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.monotonic() - start, usage.ru_maxrss / 1e6


def main(args: list[str]) -> int:
    files = sorted(TESTS.glob("test_*.py"))
    rows, failed = [], []
    # One fresh compile cache for the whole run (as on a clean CI machine), shared by the files.
    scratch = tempfile.mkdtemp(prefix="napari-sam-ms-run-")
    os.environ.setdefault("NAPARI_SAM_MS_COMPILE_CACHE", os.path.join(scratch, "compile"))
    start = time.monotonic()
    for path in files:
        code, seconds, peak = run_file(path, args)
        ok = code in (0, NO_TESTS)
        rows.append(
            f"{path.name:40s} {'ok' if ok else f'FAILED ({code})':12s} "
            f"{seconds:7.1f} s {peak:6.2f} GB"
        )
        if not ok:
            failed.append(path.name)
    shutil.rmtree(scratch, ignore_errors=True)
    print("\n== files: outcome, time, peak memory")
    print("\n".join(rows))
    print(
        f"{len(files)} files in {(time.monotonic() - start) / 60:.1f} min; "
        f"failed: {', '.join(failed) or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
