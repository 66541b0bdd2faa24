"""The npe2 manifest: valid, found in the editable install, and shipped in the wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
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
    assert widgets == {"Segment with prompts", "Automatic segmentation", "Fine-tune SAM", "Volumes"}
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


# What each contributed command must resolve to: (module, attribute, title).
COMMANDS = {
    "napari-sam-ms.prompt_widget": (
        "napari_sam_ms._qt.prompt_widget",
        "PromptWidget",
        "Segment with prompts",
    ),
    "napari-sam-ms.auto_widget": (
        "napari_sam_ms._qt.auto_widget",
        "AutoWidget",
        "Automatic segmentation",
    ),
    "napari-sam-ms.finetune_widget": (
        "napari_sam_ms._qt.finetune_widget",
        "FinetuneWidget",
        "Fine-tune SAM",
    ),
    "napari-sam-ms.volume_widget": (
        "napari_sam_ms._qt.volume_widget",
        "VolumeWidget",
        "Volumes",
    ),
    "napari-sam-ms.sample_nuclei": (
        "napari_sam_ms.sample_data",
        "make_sample_data",
        "Fluorescent nuclei (synthetic)",
    ),
}
WIDGET_COMMANDS = (
    "napari-sam-ms.prompt_widget",
    "napari-sam-ms.auto_widget",
    "napari-sam-ms.finetune_widget",
    "napari-sam-ms.volume_widget",
)


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(ROOT / "napari.yaml")


def _resolve(python_name: str):
    module, attribute = python_name.split(":")
    return getattr(importlib.import_module(module), attribute)


def test_commands_resolve_to_their_objects_with_their_titles():
    from magicgui.widgets import Container

    contributions = _manifest().contributions
    commands = {c.id: c for c in contributions.commands}
    assert set(commands) == set(COMMANDS)
    for cid, (module, attribute, title) in COMMANDS.items():
        assert commands[cid].title == title
        target = _resolve(commands[cid].python_name)
        assert target is getattr(importlib.import_module(module), attribute)
        if cid in WIDGET_COMMANDS:
            assert isinstance(target, type) and issubclass(target, Container), cid
        else:
            assert callable(target) and not isinstance(target, type), cid
    # each widget and sample contribution points at its command and shows its title
    shown = {w.command: w.display_name for w in contributions.widgets}
    assert shown == {cid: COMMANDS[cid][2] for cid in WIDGET_COMMANDS}
    (sample,) = contributions.sample_data
    assert (sample.command, sample.key) == ("napari-sam-ms.sample_nuclei", "nuclei")
    assert sample.display_name == COMMANDS[sample.command][2]


def test_sample_data_command_returns_an_image_layer_tuple():
    from napari_sam_ms.sample_data import fluorescent_nuclei

    commands = {c.id: c for c in _manifest().contributions.commands}
    make = _resolve(commands["napari-sam-ms.sample_nuclei"].python_name)
    layers = make()
    assert isinstance(layers, list) and len(layers) == 1
    data, meta, kind = layers[0]
    assert kind == "image"
    assert data.dtype == np.uint16 and data.shape == (512, 512)
    np.testing.assert_array_equal(data, fluorescent_nuclei())  # the seeded sample
    assert meta["name"] == "nuclei (synthetic)" and meta["colormap"] == "gray"
    low, high = meta["contrast_limits"]
    assert data.min() <= low < high <= data.max()


def test_sample_data_opens_as_an_image_layer(make_napari_viewer):
    from napari.layers import Image

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam-ms", "nuclei")
    (layer,) = viewer.layers
    assert isinstance(layer, Image) and layer.name == "nuclei (synthetic)"
    assert layer.data.dtype.name == "uint16" and layer.data.shape == (512, 512)
    assert layer.colormap.name == "gray"


def test_widgets_open_from_the_plugin_menu(make_napari_viewer):
    from magicgui.widgets import Container

    viewer = make_napari_viewer()
    for cid in WIDGET_COMMANDS:
        module, attribute, title = COMMANDS[cid]
        dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-ms", title)
        assert type(widget) is getattr(importlib.import_module(module), attribute)
        assert isinstance(widget, Container)
        assert dock.name == f"{title} (napari-sam-ms)"  # napari names docks so
        assert widget.native.parent() is not None  # docked in the viewer's window


# napari as the README's first command starts it (``napari.__main__.main`` with its arguments),
# except that instead of entering the event loop it reports the docked widgets, saves a
# screenshot of the whole window and closes.
OPEN_AS_README = """
import json, sys

import napari
from napari.__main__ import main
from qtpy.QtWidgets import QApplication, QDockWidget

out = sys.argv[1]


def report(*args, **kwargs):
    viewer = napari.current_viewer()
    for _ in range(50):
        QApplication.processEvents()
    docks = {}
    for name, widget in viewer.window.dock_widgets.items():
        dock = widget.native if hasattr(widget, "native") else widget
        while not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget()
        docks[name] = {
            "type": type(widget).__module__ + "." + type(widget).__name__,
            "area": int(window.dockWidgetArea(dock).value),
            "in_front": not dock.visibleRegion().isEmpty(),
            "tabbed_with": sorted(d.windowTitle() for d in window.tabifiedDockWidgets(dock)),
        }
    viewer.screenshot(path=out + ".png", canvas_only=False, flash=False)
    with open(out + ".json", "w") as fh:
        json.dump(docks, fh)
    viewer.close()


napari.run = report
sys.argv = ["napari", *sys.argv[2:]]
main()
"""


def readme_napari_arguments() -> list[str]:
    """The arguments of ``.venv/bin/napari`` in the README's first command."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if ".venv/bin/napari " in x and "pip install" in x]
    return shlex.split(line.split(".venv/bin/napari ", 1)[1])


def open_as_readme(tmp_path: Path) -> tuple[dict, Path]:
    script = tmp_path / "open_as_readme.py"
    script.write_text(OPEN_AS_README, encoding="utf-8")
    out = tmp_path / "readme_command"
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "napari_settings.yaml")}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *readme_napari_arguments()],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".png")


def test_readme_command_docks_all_widgets_as_tabs(tmp_path):
    assert readme_napari_arguments()[:2] == ["-w", "napari-sam-ms"]
    docks, screenshot = open_as_readme(tmp_path)
    want = {
        f"{COMMANDS[cid][2]} (napari-sam-ms)": f"{COMMANDS[cid][0]}.{COMMANDS[cid][1]}"
        for cid in WIDGET_COMMANDS
    }
    assert {name: d["type"] for name, d in docks.items()} == want
    for name, dock in docks.items():
        assert dock["tabbed_with"] == sorted(set(want) - {name})  # one group of tabs
        assert dock["area"] == docks["Segment with prompts (napari-sam-ms)"]["area"]
    in_front = [name for name, dock in docks.items() if dock["in_front"]]
    assert in_front == ["Segment with prompts (napari-sam-ms)"]
    from PIL import Image

    with Image.open(screenshot) as shot:
        assert shot.width >= 800 and shot.height >= 500


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
