"""Fetching weights: registry, cache, download from a loopback server, conversion once."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import sys
import threading
from functools import partial
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch

from napari_sam_ms.build_sam import CONFIGS, build_sam
from napari_sam_ms.weights import registry as weights

sys.path.insert(0, str(Path(__file__).parent))
from reference import build_reference_sam, state_dict_numpy  # noqa: E402

PTH_NAME = "sam_tiny_test_0a1b2c.pth"


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def meta_tiny():
    return build_reference_sam(CONFIGS["tiny"], seed=11)


@pytest.fixture
def served(tmp_path: Path, meta_tiny):
    """(server, registry) serving a tiny Meta checkpoint under PTH_NAME."""
    root = tmp_path / "served"
    root.mkdir()
    torch.save(meta_tiny.state_dict(), root / PTH_NAME)
    data = (root / PTH_NAME).read_bytes()
    registry = {
        "sam_tiny": {
            "model_type": "tiny",
            "url": f"https://example.invalid/weights/{PTH_NAME}",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    }
    server = _Server(root)
    yield server, registry
    server.close()


@pytest.fixture(autouse=True)
def isolated(use_settings, tmp_path: Path, monkeypatch) -> Path:
    """A private cache folder, no URL override, no proxy for loopback."""
    cache = tmp_path / "cache"
    use_settings(weights_dir=str(cache))
    use_settings(weights_url=None)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


def _assert_meta_values(path: Path, meta_tiny) -> None:
    model = build_sam("tiny", checkpoint=path)
    expected = state_dict_numpy(meta_tiny)
    for name, param in model.parameters_dict().items():
        np.testing.assert_array_equal(param.asnumpy(), expected[name], err_msg=name)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_shipped_registry() -> None:
    registry = weights.load_registry()
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(registry)
    for name, entry in registry.items():
        if "url" not in entry:
            assert "file" in entry
            continue
        if not name.startswith("sam_"):  # MobileSAM, micro-sam: test_checkpoint_layouts.py
            continue
        assert entry["url"].startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_")
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert entry["model_type"] == name[len("sam_") :]
        assert entry["size"] > 100_000_000
    assert registry["sam_vit_b"]["sha256"].startswith("ec2df62732614e57")
    assert weights.lookup("vit_b")[0] == "sam_vit_b"
    assert weights.lookup("sam_vit_l")[0] == "sam_vit_l"
    assert weights.lookup("default")[0] == "sam_vit_h"
    with pytest.raises(ValueError, match="no weights are registered for 'vit_q'"):
        weights.lookup("vit_q")


def test_download_verify_convert_then_offline(served, isolated: Path, meta_tiny) -> None:
    server, registry = served
    path = weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url, progress=False)
    assert path == isolated / PTH_NAME.replace(".pth", ".ckpt")
    assert server.requests == [f"/{PTH_NAME}"]
    assert _names(isolated) == sorted([PTH_NAME, path.name])
    _assert_meta_values(path, meta_tiny)
    again = weights.fetch_checkpoint("sam_tiny", registry=registry, base_url=server.url)
    assert again == path
    assert len(server.requests) == 1  # no network the second time


def test_url_override_from_environment(use_settings, served, isolated: Path, monkeypatch) -> None:
    server, registry = served
    use_settings(weights_url=str(server.url + "/"))
    path = weights.fetch_checkpoint("tiny", registry=registry, progress=False)
    assert path.is_file() and len(server.requests) == 1


def test_explicit_cache_dir(served, tmp_path: Path, isolated: Path) -> None:
    server, registry = served
    other = tmp_path / "elsewhere"
    path = weights.fetch_checkpoint("tiny", other, False, registry=registry, base_url=server.url)
    assert path.parent == other and not isolated.exists()


def test_wrong_hash_keeps_nothing(served, isolated: Path) -> None:
    server, registry = served
    registry["sam_tiny"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="corrupt or not the official file"):
        weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url, progress=False)
    assert len(server.requests) == 1
    assert _names(isolated) == []  # neither the .pth nor a .ckpt nor a temp file


@pytest.mark.parametrize("good", [True, False])
def test_download_checked_by_xxh128(served, isolated: Path, meta_tiny, good: bool) -> None:
    """An entry with micro-sam's xxh128 instead of sha256: pooch checks it while downloading."""
    server, registry = served
    entry = registry["sam_tiny"]
    digest = weights.xxh128_of(server.root / PTH_NAME) if good else "0" * 32
    registry = {"tiny_lm": {"model_type": "tiny", "url": entry["url"], "xxh128": digest}}
    if not good:
        with pytest.raises(ValueError, match="corrupt or not the official file"):
            weights.fetch_checkpoint("tiny_lm", registry=registry, base_url=server.url)
        assert _names(isolated) == []
        return
    path = weights.fetch_checkpoint("tiny_lm", registry=registry, base_url=server.url)
    assert server.requests == [f"/{PTH_NAME}"]
    _assert_meta_values(path, meta_tiny)


def test_hand_copied_pth_is_used_without_network(served, isolated: Path, meta_tiny) -> None:
    server, registry = served
    isolated.mkdir()
    shutil.copy(server.root / PTH_NAME, isolated)
    path = weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url)
    assert server.requests == []
    _assert_meta_values(path, meta_tiny)


def test_hand_copied_wrong_file_is_refused(served, isolated: Path) -> None:
    server, registry = served
    isolated.mkdir()
    (isolated / PTH_NAME).write_bytes(b"x" * registry["sam_tiny"]["size"])
    with pytest.raises(ValueError, match="does not match the official file"):
        weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url)
    (isolated / PTH_NAME).write_bytes(b"short")
    with pytest.raises(ValueError, match=r"has 5 bytes, not the \d+ of the official file"):
        weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url)
    assert server.requests == []
    assert _names(isolated) == [PTH_NAME]  # the user's file is left alone, no .ckpt


def test_failed_conversion_is_retried_from_the_cached_download(
    served, isolated: Path, monkeypatch
) -> None:
    server, registry = served

    def broken_save(items, name, **kwargs):
        Path(name).write_bytes(b"partial")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(ms, "save_checkpoint", broken_save)
        with pytest.raises(OSError, match="disk full"):
            weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url, progress=False)
    assert _names(isolated) == [PTH_NAME]
    path = weights.fetch_checkpoint("tiny", registry=registry, base_url=server.url)
    assert path.is_file() and len(server.requests) == 1


def test_unreachable_server(served, isolated: Path) -> None:
    server, registry = served
    url = server.url
    server.close()
    with pytest.raises(ConnectionError, match=f"copy the official {PTH_NAME} into"):
        weights.fetch_checkpoint("tiny", registry=registry, base_url=url, progress=False)
    assert _names(isolated) == []


def test_bundled_file_entry(served, tmp_path: Path, isolated: Path, monkeypatch) -> None:
    server, _ = served
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    shutil.copy(server.root / PTH_NAME, bundled / "tiny.pth")
    monkeypatch.setattr(weights, "bundled_weights_dir", lambda: bundled)
    sha = weights.sha256_of(bundled / "tiny.pth")
    registry = {"sam_tiny_local": {"model_type": "tiny", "file": "tiny.pth", "sha256": sha}}
    ckpt = weights.fetch_checkpoint("tiny", registry=registry)
    assert ckpt == isolated / "tiny.ckpt"
    shutil.copy(ckpt, bundled / "tiny.ckpt")
    registry = {"sam_tiny_local": {"model_type": "tiny", "file": "tiny.ckpt"}}
    assert weights.fetch_checkpoint("sam_tiny_local", registry=registry) == bundled / "tiny.ckpt"
    registry["sam_tiny_local"]["sha256"] = "f" * 64
    with pytest.raises(ValueError, match="does not match"):
        weights.fetch_checkpoint("tiny", registry=registry)
    assert server.requests == []


def test_build_sam_fetches_end_to_end(
    use_settings, served, isolated: Path, monkeypatch, meta_tiny
) -> None:
    server, registry = served
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    use_settings(weights_url=str(server.url))
    model = build_sam("tiny")
    expected = state_dict_numpy(meta_tiny)
    for name, param in model.parameters_dict().items():
        np.testing.assert_array_equal(param.asnumpy(), expected[name], err_msg=name)
    build_sam("sam_tiny")
    assert len(server.requests) == 1


def test_default_model_choice(isolated: Path, tmp_path: Path, monkeypatch) -> None:
    """vit_b when its official weights are here; else the embedded model when the package
    ships it; else vit_b (fetched on first use). No network is used to decide."""
    registry = {"sam_ms_micro": {"model_type": "micro", "file": "micro.ckpt"}}
    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(weights, "bundled_weights_dir", lambda: folder)
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    assert not weights.embedded_model_available()  # registered, file missing
    assert weights.default_model_type() == "vit_b"
    (folder / "micro.ckpt").write_bytes(b"weights")
    assert weights.embedded_model_available()
    assert weights.default_model_type() == "micro"
    monkeypatch.setattr(weights, "load_registry", lambda path=None: {**registry, **OFFICIAL})
    isolated.mkdir(parents=True, exist_ok=True)
    (isolated / "sam_vit_b_01ec64.pth").write_bytes(b"copied by hand")
    assert weights.official_weights_present("vit_b")
    assert weights.default_model_type() == "vit_b"


OFFICIAL = {
    "sam_vit_b": {
        "model_type": "vit_b",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    }
}
