"""The settings object: read from the environment in one place, once, and frozen."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from napari_sam_ms import settings
from napari_sam_ms.settings import VARIABLES, Settings, override, parse_flag

ROOT = Path(__file__).parents[1]


def test_defaults_without_environment():
    assert Settings.from_env({}) == Settings()
    assert Settings().decode_chunk == 4 and Settings().encoder_graphs is None


def test_every_variable_sets_its_field():
    env = {
        "NAPARI_SAM_MS_DEVICE": "gpu",
        "NAPARI_SAM_MS_DEVICE_ID": "2",
        "NAPARI_SAM_MS_ENCODER_GRAPHS": "0",
        "NAPARI_SAM_MS_STAGE_BLOCKS": "5",
        "NAPARI_SAM_MS_DECODER_GRAPHS": "yes",
        "NAPARI_SAM_MS_DECODE_CHUNK": "16",
        "NAPARI_SAM_MS_ATTN_CHUNK_MB": "0",
        "NAPARI_SAM_MS_LAUNCH_BLOCKING": "off",
        "NAPARI_SAM_MS_GRAPH_KERNEL": "False",
        "NAPARI_SAM_MS_JIT": "1",
        "NAPARI_SAM_MS_WEIGHTS": " /w ",
        "NAPARI_SAM_MS_WEIGHTS_URL": "http://127.0.0.1:1/",
        "NAPARI_SAM_MS_CACHE": "off",
        "NAPARI_SAM_MS_CACHE_GB": "0.5",
        "NAPARI_SAM_MS_COMPILE_CACHE": " /c ",
        "NAPARI_SAM_MS_SYNC": "true",
    }
    assert set(env) == {v.name for v in VARIABLES}
    got = Settings.from_env(env)
    assert got == Settings(
        device="gpu",
        device_id=2,
        encoder_graphs=False,
        stage_blocks=5,
        decoder_graphs=True,
        decode_chunk=16,
        attn_chunk_mb=0.0,
        launch_blocking=False,
        graph_kernel=False,
        jit=True,
        weights_dir="/w",
        weights_url="http://127.0.0.1:1/",
        cache_dir="off",
        cache_parts_gb=0.5,
        compile_cache="/c",
        sync=True,
    )
    assert {v.field for v in VARIABLES} == {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("NAPARI_SAM_MS_SYNC", "maybe", "NAPARI_SAM_MS_SYNC='maybe': use 1 or 0"),
        (
            "NAPARI_SAM_MS_DECODE_CHUNK",
            "four",
            "NAPARI_SAM_MS_DECODE_CHUNK='four' is not a whole number",
        ),
        ("NAPARI_SAM_MS_DECODE_CHUNK", "0", "decode_chunk must be at least 1"),
        ("NAPARI_SAM_MS_ATTN_CHUNK_MB", "-1", "attn_chunk_mb must be 0 or more"),
    ],
)
def test_bad_values_name_the_variable(name, value, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        Settings.from_env({name: value})


def test_flags_parse_once_the_same_way():
    for text in ("1", "true", "Yes", " ON "):
        assert parse_flag("X", text) is True
    for text in ("0", "false", "No", "off"):
        assert parse_flag("X", text) is False


def test_frozen_and_read_once(monkeypatch):
    first = settings.current()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.sync = True  # type: ignore[misc]
    monkeypatch.setenv("NAPARI_SAM_MS_DECODE_CHUNK", "99")
    assert settings.current() is first  # the environment is read once


def test_override_nests_and_restores():
    before = settings.current()
    with override(decode_chunk=7) as outer:
        assert settings.current() is outer and outer.decode_chunk == 7
        with override(sync=True) as inner:
            assert inner.decode_chunk == 7 and inner.sync
        assert settings.current() is outer
    assert settings.current() is before


def test_readme_lists_every_variable():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings.readme_table() in readme


def test_only_the_settings_module_reads_our_variables():
    """No other module reads NAPARI_SAM_MS_* from the environment."""
    offenders = []
    for path in (ROOT / "napari_sam_ms").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "settings.py" and re.search(r"environ|getenv", text):
            if re.search(r"[\"']NAPARI_SAM_MS_", text):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []
