"""SAM-family checkpoints through the strict, torch-free reader: Meta's plain state dict,
MobileSAM's ``mobile_sam.pt`` (TinyViT with its unused classification head) and micro-sam's
models (plain, or ``model_state`` + ``decoder_state``); wrong layouts and truncated files;
the registry's MobileSAM and micro-sam entries (xxh128 hashes, one-line descriptions).
Checkpoints: ``torch.save`` of random arrays named and shaped by ``expected_shapes``, read
back through the public path (vit_t: MobileSAM's TinyViT, napari_sam_ms.modeling.tiny_vit).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash

from napari_sam_ms.loader import ModelLoadError, load_model
from napari_sam_ms.weights import list_models, read_checkpoint, registry
from napari_sam_ms.weights.config import config_of
from napari_sam_ms.weights.convert import convert
from napari_sam_ms.weights.layouts import DECODER_NOTE, WHAT_TO_USE, read_sam_checkpoint
from napari_sam_ms.weights.shapes import expected_shapes

LAYOUT_LOG = "napari_sam_ms.weights.layouts"
TINYVIT_HEAD = {  # MobileSAM's TinyViT classification head (tiny_vit_sam.py): 320 -> 1000
    "image_encoder.norm_head.weight": (320,),
    "image_encoder.norm_head.bias": (320,),
    "image_encoder.head.weight": (1000, 320),
    "image_encoder.head.bias": (1000,),
}


# --------------------------------------------------------------------- helpers


def _random_state(model_type: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 values for every parameter of a model type."""
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(config_of(model_type))
    return {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}


def _torch(obj: Any) -> Any:
    """numpy arrays -> torch tensors, inside dicts too."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        return {k: _torch(v) for k, v in obj.items()}
    return obj


def _save(obj: Any, path: Path) -> Path:
    torch.save(_torch(obj), path)
    return path


def _assert_model_values(model: Any, state: Mapping[str, np.ndarray]) -> None:
    """Every model parameter equals the source array of the same name, and no more."""
    params = model.parameters_dict()
    assert set(params) == set(state)
    for name, param in params.items():
        np.testing.assert_array_equal(param.asnumpy(), state[name], err_msg=name)


def _decoder_state(seed: int = 1) -> dict[str, np.ndarray]:
    """Stand-in for micro-sam's instance-segmentation decoder (UNETR decoder) weights."""
    rng = np.random.default_rng(seed)
    return {
        "decoder.blocks.0.block.0.weight": rng.normal(size=(8, 16, 3, 3)).astype(np.float32),
        "base.block.0.weight": rng.normal(size=(16, 32, 3, 3)).astype(np.float32),
        "out_conv.weight": rng.normal(size=(3, 8, 1, 1)).astype(np.float32),
    }


def _prefixed(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v for k, v in state.items()}


def _micro_sam_layouts(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """The ways micro-sam stores a SAM (micro_sam/util.py: _load_checkpoint,
    export_custom_sam_model; bioimageio/model_export.py: combined weights)."""
    return {
        "plain": state,
        "exported_with_decoder": {"model_state": state, "decoder_state": _decoder_state()},
        "training_checkpoint": {
            "model_state": _prefixed(state, "sam."),
            "decoder_state": _decoder_state(),
            "iteration": 1200,
            "best_metric": 0.25,
            "optimizer_state": {"param_groups": [{"lr": 1e-5}], "state": {}},
        },
        "training_checkpoint_no_decoder": {"model_state": _prefixed(state, "sam."), "epoch": 3},
    }


def _head(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in TINYVIT_HEAD.items()}


def _decoder_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if DECODER_NOTE in r.getMessage()]


# --------------------------------------------------------------------- layouts


def test_meta_plain_state_dict(tmp_path: Path) -> None:
    state = _random_state("tiny")
    path = _save(state, tmp_path / "sam_tiny.pth")
    found = read_sam_checkpoint(path)
    assert found.layout == "SAM state dict" and found.notes == ()
    loaded = load_model(checkpoint=path)
    assert loaded.model_type == "tiny"
    _assert_model_values(loaded.model, state)


@pytest.mark.parametrize(
    "layout",
    ["plain", "exported_with_decoder", "training_checkpoint", "training_checkpoint_no_decoder"],
)
def test_micro_sam_layouts_load_and_convert(
    layout: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _random_state("tiny", seed=3)
    path = _save(_micro_sam_layouts(state)[layout], tmp_path / f"{layout}.pt")
    with caplog.at_level(logging.INFO, logger=LAYOUT_LOG):
        loaded = load_model(checkpoint=path)
    assert loaded.model_type == "tiny"
    _assert_model_values(loaded.model, state)
    with_decoder = layout in ("exported_with_decoder", "training_checkpoint")
    assert _decoder_lines(caplog) == [f"{path}: {DECODER_NOTE}"] * with_decoder
    assert read_sam_checkpoint(path).layout == (
        "SAM state dict" if layout == "plain" else "micro-sam model"
    )

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LAYOUT_LOG):
        ckpt = convert(path, tmp_path / f"{layout}.ckpt")
    assert len(_decoder_lines(caplog)) == with_decoder
    values, config = read_checkpoint(ckpt)
    assert config == config_of("tiny")
    assert set(values) == set(state)
    for name, value in values.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)


def test_extra_keys_are_refused_outside_tinyvit(tmp_path: Path) -> None:
    """Only MobileSAM's classification head is dropped, and only from a TinyViT encoder."""
    state = _random_state("tiny")
    path = _save({**state, **_head(0)}, tmp_path / "vit_with_head.pth")
    with pytest.raises(ModelLoadError, match=r"4 unexpected \(image_encoder\.norm_head\.weight"):
        load_model(checkpoint=path)
    path = _save({**state, "sam.extra": state["mask_decoder.iou_token.weight"]}, tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match=r"1 unexpected \(sam\.extra\)"):
        load_model(checkpoint=path)


def test_mobile_sam_head_is_dropped(tmp_path: Path) -> None:
    state = _random_state("vit_t", seed=5)
    assert not set(TINYVIT_HEAD) & set(state)
    head = _head(6)
    path = _save({**state, **head}, tmp_path / "mobile_sam.pt")
    found = read_sam_checkpoint(path)
    assert found.layout == "SAM state dict (TinyViT encoder)"
    assert set(found.state) == set(state)
    loaded = load_model(checkpoint=path)
    assert loaded.model_type == "vit_t"
    _assert_model_values(loaded.model, state)
    # "nothing else extra": another unknown encoder key is still refused
    extra = {"image_encoder.extra.weight": head["image_encoder.head.bias"]}
    path = _save({**state, **head, **extra}, tmp_path / "mobile_sam_extra.pt")
    with pytest.raises(ModelLoadError, match=r"1 unexpected \(image_encoder\.extra\.weight\)"):
        load_model(checkpoint=path)


def test_mobile_sam_reference_state_dict(tmp_path: Path) -> None:
    """The state dict of MobileSAM's own ``Sam`` (what ``mobile_sam.pt`` holds), saved by
    torch: every key but the classification head is used, values unchanged."""
    from reference import load_mobile_sam, state_dict_numpy

    torch.manual_seed(0)
    reference = load_mobile_sam("build_sam").build_sam_vit_t()
    state = state_dict_numpy(reference)
    assert set(TINYVIT_HEAD) <= set(state)
    path = tmp_path / "mobile_sam.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_model(checkpoint=path)
    assert loaded.model_type == "vit_t"
    used = {k: v for k, v in state.items() if k not in TINYVIT_HEAD}
    _assert_model_values(loaded.model, used)


def test_micro_sam_vit_t_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """micro-sam's vit_t models (vit_t_lm...): MobileSAM's keys, head included, behind
    ``model_state`` with the decoder beside them."""
    state = _random_state("vit_t", seed=7)
    ckpt = _micro_sam_layouts({**state, **_head(8)})["training_checkpoint"]
    path = _save(ckpt, tmp_path / "vit_t_lm.pt")
    assert read_sam_checkpoint(path).layout == "micro-sam model (TinyViT encoder)"
    with caplog.at_level(logging.INFO, logger=LAYOUT_LOG):
        loaded = load_model(checkpoint=path)
    assert len(_decoder_lines(caplog)) == 1
    _assert_model_values(loaded.model, state)


# --------------------------------------------------------------------- wrong files


def _classifier(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv1.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "bn1.running_mean": np.zeros(8, np.float32),
        "fc.weight": rng.normal(size=(10, 8)).astype(np.float32),
        "fc.bias": np.zeros(10, np.float32),
    }


@pytest.mark.parametrize(
    "kind, holds",
    [
        ("classifier", r"holds 4 tensors \(conv1\.weight, bn1\.running_mean, fc\.weight, fc\.bias\)"
         r" but none of SAM's .*image-classification network"),
        ("training_state", r"holds a dict \(epoch, optimizer_state\) with no state dict"),
        ("decoder_alone", r"holds 3 tensors .*a decoder alone, such as micro-sam's "
         r"\*_decoder\.pt"),
        ("unetr_model_state", r"holds 2 tensors \(encoder\.patch_embed\.proj\.weight, "
         r"out_conv\.weight\) but none of SAM's"),
        ("tensor", r"holds a single tensor of shape \(3, 4\)"),
        ("list", r"holds a list, not a dict of weights"),
    ],
)  # fmt: skip
def test_wrong_layout_says_what_the_file_is(kind: str, holds: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    obj = {
        "classifier": _classifier(rng),
        "training_state": {"epoch": 3, "optimizer_state": {"state": {}, "param_groups": []}},
        "decoder_alone": _decoder_state(),
        "unetr_model_state": {
            "model_state": {
                "encoder.patch_embed.proj.weight": rng.normal(size=(4, 3, 2, 2)),
                "out_conv.weight": rng.normal(size=(1, 4, 1, 1)),
            }
        },
        "tensor": rng.normal(size=(3, 4)).astype(np.float32),
        "list": [1, 2, 3],
    }[kind]
    path = _save(obj, tmp_path / f"{kind}.pth")
    for attempt in (lambda: convert(path), lambda: read_checkpoint(path)):
        with pytest.raises(ValueError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(str(path))
        assert re.search(holds, message), message
        assert f"it is not a SAM checkpoint; {WHAT_TO_USE}" in message
    with pytest.raises(ModelLoadError, match="it is not a SAM checkpoint"):
        load_model(checkpoint=path)
    assert not (tmp_path / f"{kind}.ckpt").exists()


@pytest.mark.parametrize("keep", [0.5, 0.99])
@pytest.mark.parametrize("layout", ["meta", "micro_sam"])
def test_truncated_file(layout: str, keep: float, tmp_path: Path) -> None:
    state = _random_state("tiny")
    obj = state if layout == "meta" else _micro_sam_layouts(state)["training_checkpoint"]
    path = _save(obj, tmp_path / "cut.pth")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    size = path.stat().st_size
    expected = (
        rf"{re.escape(str(path))} \({size} bytes\) is a PyTorch checkpoint that is damaged or "
        r"truncated \(.*\), e\.g\. an interrupted download or copy: download or copy it again"
    )
    with pytest.raises(ValueError, match=expected):
        convert(path)
    with pytest.raises(ModelLoadError, match=expected):
        load_model(checkpoint=path)
    assert not (tmp_path / "cut.ckpt").exists()


# --------------------------------------------------------------------- registry


def test_registry_entries_are_well_formed() -> None:
    entries = registry.load_registry()
    hexes = {"sha256": 64, "xxh128": 32}
    fnames = []
    for name, entry in entries.items():
        assert entry["model_type"] in ("vit_t", "vit_b", "vit_l", "vit_h", "micro"), name
        assert ("url" in entry) != ("file" in entry), name
        assert any(k in entry for k in hexes), f"{name} has no hash"
        for kind, length in hexes.items():
            if kind in entry:
                assert re.fullmatch(rf"[0-9a-f]{{{length}}}", entry[kind]), (name, kind)
        assert 20 < len(entry["description"]) < 120 and "\n" not in entry["description"], name
        if "url" in entry:
            assert entry["url"].startswith("https://"), name
            fnames.append(registry._source_name(entry))
            assert registry.known_hash(entry) is not None
    assert len(fnames) == len(set(fnames)), "two downloads would share a cache file name"
    names = [m.name for m in list_models()]
    assert len(names) == len(set(names))
    for key, entry in entries.items():  # every listed name finds its own entry
        assert registry.lookup(registry.display_name(key, entry), entries)[0] == key


def test_registry_mobile_sam_and_micro_sam_entries() -> None:
    """URLs and hashes as micro-sam publishes them (micro_sam/util.py, models())."""
    entries = registry.load_registry()
    vit_t = entries["vit_t"]
    assert (
        vit_t["url"]
        == "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    )
    assert vit_t["xxh128"] == "8eadbc88aeb9d8c7e0b4b60c3db48bd0"
    assert vit_t["sha256"].startswith("6dbb90523a35330f")
    assert registry.known_hash(vit_t) == f"sha256:{vit_t['sha256']}"
    lm = entries["vit_b_lm"]
    assert (lm["model_type"], lm["xxh128"]) == ("vit_b", "fe9252a29f3f4ea53c15a06de471e186")
    assert lm["url"].endswith("/diplomatic-bug/1.2/files/vit_b.pt")
    assert registry.known_hash(lm) == "xxh128:fe9252a29f3f4ea53c15a06de471e186"
    assert lm["description"] == "light microscopy: cells and nuclei (micro-sam, vit_b)"
    expected = {
        "vit_t_lm": "vit_t", "vit_l_lm": "vit_l", "vit_t_em_organelles": "vit_t",
        "vit_b_em_organelles": "vit_b", "vit_l_em_organelles": "vit_l",
        "vit_b_histopathology": "vit_b", "vit_l_histopathology": "vit_l",
        "vit_h_histopathology": "vit_h", "vit_b_medical_imaging": "vit_b",
    }  # fmt: skip
    assert {k: entries[k]["model_type"] for k in expected} == expected
    assert registry.lookup("vit_t", entries)[0] == "vit_t"  # not vit_t_lm


def test_xxh128_verification(tmp_path: Path) -> None:
    path = tmp_path / "vit_b_lm.pt"
    path.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    digest = xxhash.xxh128(path.read_bytes()).hexdigest()
    assert registry.xxh128_of(path, chunk=1 << 16) == digest
    entry = {"model_type": "vit_b", "url": "https://example.invalid/x.pt", "xxh128": digest}
    registry.verify_file(path, entry)
    registry.verify_file(path, {**entry, "xxh128": digest.upper()})
    data = bytearray(path.read_bytes())
    data[12345] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError,
        match=rf"does not match the official file \(xxh128 [0-9a-f]{{32}}, expected {digest}\)",
    ):
        registry.verify_file(path, entry)
    sha = registry.sha256_of(path)  # both hashes given: both must match
    with pytest.raises(ValueError, match="xxh128"):
        registry.verify_file(path, {**entry, "sha256": sha})
    registry.verify_file(path, {**entry, "sha256": sha, "xxh128": registry.xxh128_of(path)})


def test_fetch_xxh128_entry_with_patched_download(
    use_settings, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A micro-sam-style entry (URL ending in /download, fname, xxh128 only): pooch gets
    ``known_hash="xxh128:..."`` and checks it; the file is converted once."""
    import pooch

    cache = tmp_path / "cache"
    use_settings(weights_dir=str(cache), weights_url=None)
    state = _random_state("tiny", seed=9)
    served = _save(_micro_sam_layouts(state)["exported_with_decoder"], tmp_path / "served.pt")
    digest = registry.xxh128_of(served)
    calls: list[dict[str, Any]] = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append(dict(url=url, known_hash=known_hash, fname=fname))
        target = Path(path) / fname
        target.write_bytes(served.read_bytes())
        assert pooch.hashes.hash_matches(str(target), known_hash, strict=True)
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    entries = {
        "tiny_lm": {
            "model_type": "tiny",
            "url": "https://owncloud.example.invalid/index.php/s/abc/download",
            "fname": "tiny_lm.pt",
            "xxh128": digest,
            "description": "light microscopy test entry",
        }
    }
    with caplog.at_level(logging.INFO, logger=LAYOUT_LOG):
        ckpt = registry.fetch_checkpoint("tiny_lm", registry=entries, progress=False)
        again = registry.fetch_checkpoint("tiny_lm", registry=entries, progress=False)
    assert ckpt == again == cache / "tiny_lm.ckpt"
    url = entries["tiny_lm"]["url"]
    assert calls == [dict(url=url, known_hash=f"xxh128:{digest}", fname="tiny_lm.pt")]
    assert len(_decoder_lines(caplog)) == 1
    _assert_model_values(load_model(checkpoint=ckpt).model, state)
    assert list_models(registry=entries) == [
        registry.ModelInfo("tiny_lm", "light microscopy test entry", True)
    ]


def test_list_models_offline_flags(use_settings, tmp_path: Path, monkeypatch) -> None:
    cache, bundled = tmp_path / "cache", tmp_path / "bundled"
    bundled.mkdir()
    use_settings(weights_dir=str(cache))
    entries = json.loads(json.dumps(registry.load_registry()))  # a copy
    monkeypatch.setattr(registry, "bundled_weights_dir", lambda: bundled)
    models = {m.name: m for m in list_models(registry=entries)}
    assert not any(m.offline for m in models.values())
    assert models["vit_b"].description.startswith("Meta's SAM ViT-B")
    assert models["vit_b_em_organelles"].description.startswith("electron microscopy")
    (bundled / "sam_ms_micro.ckpt").write_bytes(b"shipped")
    (cache / "vit_b_lm.ckpt").write_bytes(b"converted earlier")
    (cache / "mobile_sam.pt").write_bytes(b"copied by hand")
    offline = {m.name for m in list_models(registry=entries) if m.offline}
    assert offline == {"micro", "vit_b_lm", "vit_t"}


@pytest.mark.gui
def test_widget_model_list_has_one_line_per_model(qtbot) -> None:
    from qtpy.QtCore import Qt

    from napari_sam_ms._qt.model_choice import ModelChoice, available_model_types, model_list
    from napari_sam_ms.interaction import ModelHolder

    choice = ModelChoice(ModelHolder("vit_b"))
    combo = choice._type.native
    names = [combo.itemText(i) for i in range(combo.count())]
    assert names == list(available_model_types())
    assert {"vit_b", "vit_t", "vit_b_lm", "vit_b_em_organelles"} <= set(names)
    assert names[-1] == "tiny" and (names[0] == "micro") == ("micro" in names)
    for i, model in enumerate(model_list()):
        tip = combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
        assert tip.startswith(f"{model.name}: {model.description} (")
        assert tip.endswith(
            "(on this machine)" if model.offline else "(downloaded once on first use)"
        )
    lm = names.index("vit_b_lm")
    assert "light microscopy: cells and nuclei" in combo.itemData(lm, Qt.ItemDataRole.ToolTipRole)
    choice.model_type = "vit_b_lm"
    assert choice._holder.model_type == "vit_b_lm"
