"""The npe2 manifest: valid, found in the editable install, and shipped in the wheel."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gui


def test_manifest_is_valid_and_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    manifest.validate_imports()
    ids = {c.id for c in manifest.contributions.commands}
    assert all(i.startswith("napari-sam-ms.") for i in ids)
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Segment with prompts", "Automatic segmentation", "Fine-tune SAM"}
    samples = [s.display_name for s in manifest.contributions.sample_data]
    assert samples == ["Fluorescent nuclei (synthetic)"]


def test_npe2_validate_cli_passes():
    npe2 = Path(sys.executable).with_name("npe2")
    out = subprocess.run(
        [str(npe2), "validate", "napari-sam-ms", "--imports"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_plugin_is_discovered_from_the_top_level_yaml():
    from importlib import metadata, resources

    from npe2 import PluginManager, PluginManifest

    (ep,) = [e for e in metadata.entry_points(group="napari.manifest") if e.name == "napari-sam-ms"]
    package, file = ep.value.split(":")
    shipped = resources.files(package) / file
    assert shipped.read_bytes() == (ROOT / "napari.yaml").read_bytes()
    pm = PluginManager()
    pm.discover()
    found = pm.get_manifest("napari-sam-ms")
    want = PluginManifest.from_file(ROOT / "napari.yaml")
    assert found.contributions == want.contributions


def test_sample_data_command(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam-ms", "nuclei")
    layer = viewer.layers[-1]
    assert layer.data.dtype.name == "uint16" and layer.data.shape == (512, 512)


def test_widgets_open_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("Segment with prompts", "Automatic segmentation"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-ms", name)
        assert widget is not None


@pytest.mark.skipif(
    importlib.util.find_spec("hatchling") is None, reason="needs hatchling to build the wheel"
)
def test_wheel_ships_the_manifest_and_weights_registry(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("napari_sam_ms-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("napari_sam_ms/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        assert "napari_sam_ms/weights/registry.json" in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
    assert "[napari.manifest]" in text
    assert "napari-sam-ms = napari_sam_ms:napari.yaml" in text
