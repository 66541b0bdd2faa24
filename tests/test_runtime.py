"""CPU runtime settings of :func:`napari_sam_ms.runtime.configure`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
import numpy as np
import mindspore as ms
from napari_sam_ms import runtime
runtime.configure("CPU")


@ms.jit
def square_plus_one(a):
    return a @ a + 1


x = ms.Tensor(np.ones((4, 4), np.float32))
square_plus_one(x).asnumpy()
(x * 2).asnumpy()
tasks = os.listdir("/proc/self/task")
names = sorted({open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks})
print(json.dumps({"env": os.environ.get("MS_DEV_HOST_BLOCKING_RUN"), "threads": names}))
"""


def _probe(tmp_path, **env: str) -> dict:
    run_env = {k: v for k, v in os.environ.items() if k != "MS_DEV_HOST_BLOCKING_RUN"}
    run_env.update(env)
    script = tmp_path / "probe.py"  # MindSpore compiles graphs from source files only
    script.write_text(PROBE)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=run_env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc thread names")
def test_cpu_runs_host_side_without_the_frontend_queue_thread(tmp_path):
    """Synchronous launches (the CPU default) also run MindSpore's host side in the calling
    thread: no ``frontend_queue`` thread competes with the kernels for the cores."""
    on = _probe(tmp_path, NAPARI_SAM_MS_LAUNCH_BLOCKING="1")
    assert on["env"] == "1"
    assert "frontend_queue" not in on["threads"]
    off = _probe(tmp_path, NAPARI_SAM_MS_LAUNCH_BLOCKING="0")
    assert off["env"] is None
    assert "frontend_queue" in off["threads"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp (GNU OpenMP)")
@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(given):
    """Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` before MindSpore loads libgomp,
    so idle OpenMP threads of the fused kernels sleep at once (libgomp's own report of its
    settings: spin count 0, instead of 300000 by default); a user's value stays."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints its settings when it is loaded
    probe = "import os, napari_sam_ms; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    )
    assert out.stdout.strip().splitlines()[-1] == (given or "PASSIVE")
    spin = [
        line.split("=")[1].strip(" '")
        for line in out.stderr.splitlines()
        if "GOMP_SPINCOUNT" in line
    ]
    assert spin, "libgomp did not report its settings"
    if given is None:
        assert spin[0] == "0"
    else:
        assert int(spin[0]) > 0


FUSED = """
import sys
import numpy as np
import mindspore as ms
from mindspore import ops
from napari_sam_ms import runtime

runtime.configure("CPU")


def scaled_gelu(x, y):
    return ops.gelu(x * y + 1.0).sum(axis=1) * 2.0


graph = runtime.FusedGraph(scaled_gelu, fuse=runtime.fusion_available())
ones = ms.Tensor(np.ones((64, 8), np.float32))
graph(ones, ones).asnumpy()
print(runtime.fusion_available())
"""


def test_fused_kernel_compiles_leave_no_log_in_the_users_folder(tmp_path):
    """AKG writes dsa_transfrom.log into the folder napari was started from; it is moved
    under the kernel cache."""
    user, cache = tmp_path / "user", tmp_path / "cache"
    user.mkdir()
    script = tmp_path / "fused.py"
    script.write_text(FUSED)
    env = {**os.environ, "MS_COMPILER_CACHE_PATH": str(cache)}  # empty: AKG compiles
    out = subprocess.run(
        [sys.executable, str(script)], cwd=user, capture_output=True, text=True,
        timeout=300, check=True, env=env,
    )  # fmt: skip
    if out.stdout.strip().splitlines()[-1] != "True":
        pytest.skip("no graph kernel fusion here")
    assert sorted(p.name for p in user.iterdir()) == []
    assert (cache / "akg_logs" / "dsa_transfrom.log").is_file()  # AKG did run and write it
