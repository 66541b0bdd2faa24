"""The torch-free .pth reader, the converter, strict loading and the converter's CLI."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch

import napari_sam_ms
from napari_sam_ms.build_sam import (
    CONFIGS,
    build_sam_from_checkpoint,
    build_sam_from_config,
    sam_model_registry,
)
from napari_sam_ms.weights import checkpoint as ck
from napari_sam_ms.weights import config as sizes
from napari_sam_ms.weights import convert as cw
from napari_sam_ms.weights import pth_reader, shapes

sys.path.insert(0, str(Path(__file__).parent))
from reference import build_reference_sam, state_dict_numpy  # noqa: E402

TINY = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def meta_tiny():
    """Meta's tiny Sam with random weights."""
    return build_reference_sam(TINY, seed=7)


@pytest.fixture
def tiny_pth(tmp_path: Path, meta_tiny) -> Path:
    path = tmp_path / "sam_tiny_01.pth"
    torch.save(meta_tiny.state_dict(), path)
    return path


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _params_equal(model, expected: dict[str, np.ndarray]) -> list[str]:
    """Names whose values differ from ``expected`` (empty when identical)."""
    params = model.parameters_dict()
    assert set(params) == set(expected)
    return [k for k, p in params.items() if not np.array_equal(p.asnumpy(), expected[k])]


# --- reader --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
    ],
)
def test_reader_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 5, generator=gen) * 50).to(dtype)
    got = pth_reader.load_pth(_save({"t": t, "scalar": t[1, 2].clone()}, tmp_path / "d.pth"))
    want = t.float() if dtype == torch.bfloat16 else t
    assert got["t"].dtype == want.numpy().dtype
    np.testing.assert_array_equal(got["t"], want.numpy())
    np.testing.assert_array_equal(got["scalar"], want[1, 2].numpy())
    assert got["scalar"].shape == ()


def test_reader_strides_offsets_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    views = OrderedDict(
        base=base,
        permuted=base.permute(2, 0, 1),  # non-contiguous
        sliced=base[1:, 1:3, ::2],  # offset and steps
        tail=base.reshape(-1)[7:19].reshape(3, 4),  # contiguous, non-zero offset
        expanded=base[0, 0, :1].expand(4, 3),  # stride 0
        empty=base[:, :0],
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )
    got = pth_reader.load_pth(_save(views, tmp_path / "v.pth"))
    assert list(got) == list(views)
    for name, t in views.items():
        np.testing.assert_array_equal(got[name], t.detach().numpy(), err_msg=name)
    got["permuted"][...] = -1  # strided views are copies, not aliases of the storage
    assert got["base"].min() == 0


def test_reader_big_endian_archive(tmp_path: Path) -> None:
    t = torch.linspace(-3, 3, 12).reshape(3, 4)
    little = _save({"t": t, "i": torch.arange(5)}, tmp_path / "le.pth")
    big = tmp_path / "be.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                itemsize = 4 if len(data) == t.numel() * 4 else 8
                data = np.frombuffer(data, f"<u{itemsize}").byteswap().tobytes()
            dst.writestr(info, data)
    got = pth_reader.load_pth(big)
    np.testing.assert_array_equal(got["t"], t.numpy())
    np.testing.assert_array_equal(got["i"], np.arange(5))


class _SubTensor(torch.Tensor):
    pass


def test_reader_tensor_attributes_and_subclasses(tmp_path: Path) -> None:
    t = torch.arange(3.0)
    t.note = "python attributes go through _rebuild_from_type_v2"
    np.testing.assert_array_equal(
        pth_reader.load_pth(_save({"t": t}, tmp_path / "a.pth"))["t"], [0, 1, 2]
    )
    sub = _save({"s": torch.ones(2).as_subclass(_SubTensor)}, tmp_path / "s.pth")
    with pytest.raises(ValueError, match=r"refusing to load .*_SubTensor: not tensor data"):
        pth_reader.load_pth(sub)


def test_read_state_dict_unwraps_and_strips_module(tmp_path: Path) -> None:
    sd = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    path = _save({"model": sd, "epoch": 3, "note": "x"}, tmp_path / "w.pth")
    got = pth_reader.read_state_dict(path)
    assert sorted(got) == ["a.weight", "b"]


def _zip_pickle(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
    return path


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "make_payload",
    [
        lambda marker: pickle.dumps(_Evil(marker), protocol=2),
        lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        lambda marker: f'cbuiltins\neval\n(S\'open("{marker}", "w")\'\ntR.'.encode(),
    ],
    ids=["posix.system", "os.system", "builtins.eval"],
)
def test_reader_refuses_malicious_pickle(tmp_path: Path, make_payload) -> None:
    marker = tmp_path / "pwned"
    path = _zip_pickle(tmp_path / "evil.pth", make_payload(marker))
    with pytest.raises(ValueError, match=r"refusing to load (os|posix|builtins)\.\w+"):
        pth_reader.load_pth(path)
    with pytest.raises(ValueError, match="not tensor data"):
        ck.load_checkpoint(build_sam_from_config(TINY), path)
    assert not marker.exists()


def _tensor_pickle(
    size: tuple[int, ...], stride: tuple[int, ...], offset: int, numel: int
) -> bytes:
    """Protocol-0 pickle of one ``_rebuild_tensor_v2`` call on storage ``0``."""

    def tup(values: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"

    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        b"(S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\n" + b"I%d\nt" % numel + b"Q"
        b"I%d\n" % offset + tup(size) + tup(stride) + b"I00\n"
        b"ccollections\nOrderedDict\n(tR" + b"tR."
    )


def test_reader_rejects_views_outside_their_storage(tmp_path: Path) -> None:
    storage = {"0": np.arange(4, dtype=np.float32).tobytes()}
    ok = _zip_pickle(tmp_path / "ok.pth", _tensor_pickle((2,), (2,), 1, 4), storage)
    np.testing.assert_array_equal(pth_reader.load_pth(ok), [1.0, 3.0])
    bad = _zip_pickle(tmp_path / "bad.pth", _tensor_pickle((3,), (2,), 1, 4), storage)
    with pytest.raises(ValueError, match="overruns its storage"):
        pth_reader.load_pth(bad)
    short = _zip_pickle(tmp_path / "short.pth", _tensor_pickle((4,), (1,), 0, 8), storage)
    with pytest.raises(ValueError, match="too few"):
        pth_reader.load_pth(short)


def test_reader_refuses_legacy_and_non_torch_files(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy.*re-save it with a recent torch"):
        pth_reader.load_pth(legacy)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        pth_reader.load_pth(junk)
    with pytest.raises(FileNotFoundError):
        pth_reader.load_pth(tmp_path / "missing.pth")


def test_truncated_pth_is_reported(tiny_pth: Path) -> None:
    data = tiny_pth.read_bytes()
    tiny_pth.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        cw.convert(tiny_pth)
    assert not tiny_pth.with_suffix(".ckpt").exists()


# --- shapes and model types ----------------------------------------------------------

CUSTOM = dict(TINY, encoder_depth=3, encoder_global_attn_indexes=(0, 2), decoder_mlp_dim=48)


@pytest.mark.parametrize("cfg", [TINY, CUSTOM, CONFIGS["vit_b"]], ids=["tiny", "custom", "vit_b"])
def test_expected_shapes_match_the_built_model(cfg: dict) -> None:
    model = build_sam_from_config(cfg)
    built = {k: tuple(p.shape) for k, p in model.parameters_dict().items()}
    assert shapes.expected_shapes(cfg) == built


def test_expected_shapes_match_meta(meta_tiny) -> None:
    meta = {k: tuple(v.shape) for k, v in meta_tiny.state_dict().items()}
    assert shapes.expected_shapes(TINY) == meta


@pytest.mark.parametrize("name", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_detect_model_type(name: str) -> None:
    found, config = shapes.detect_model_type(shapes.expected_shapes(CONFIGS[name]))
    assert found == name
    assert config == sizes.full_config(CONFIGS[name])


def test_detect_custom_size() -> None:
    found, config = shapes.detect_model_type(shapes.expected_shapes(CUSTOM))
    assert found == "custom"
    # decoder_num_heads changes no shape: Meta's default is assumed
    assert config == sizes.full_config(dict(CUSTOM, decoder_num_heads=8))


def test_detect_rejects_non_sam() -> None:
    with pytest.raises(ValueError, match="does not look like a SAM state dict"):
        shapes.detect_model_type({"fc.weight": (3, 4)})


# --- conversion ----------------------------------------------------------------------


def test_convert_gives_meta_values(tiny_pth: Path, meta_tiny) -> None:
    out = cw.convert(tiny_pth)
    assert out == tiny_pth.with_suffix(".ckpt") and out.is_file()
    assert sorted(p.name for p in tiny_pth.parent.iterdir()) == [out.name, tiny_pth.name]
    assert ck.read_checkpoint_config(out) == sizes.full_config(TINY)
    expected = state_dict_numpy(meta_tiny)
    assert not _params_equal(build_sam_from_checkpoint(out), expected)
    assert not _params_equal(sam_model_registry["tiny"](checkpoint=out), expected)
    # the .pth loads directly too, nothing written
    assert not _params_equal(sam_model_registry["tiny"](checkpoint=tiny_pth), expected)


def test_convert_custom_size_rebuilds_from_stored_config(tmp_path: Path) -> None:
    ref = build_reference_sam(CUSTOM, seed=2)
    pth = _save(ref.state_dict(), tmp_path / "custom.pth")
    out = cw.convert(pth, tmp_path / "out" / "custom.ckpt")
    model = build_sam_from_checkpoint(out)
    assert model.config["encoder_global_attn_indexes"] == (0, 2)
    assert not _params_equal(model, state_dict_numpy(ref))


def test_convert_half_and_wrapped_checkpoint(tmp_path: Path, meta_tiny) -> None:
    half = {f"module.{k}": v.half() for k, v in meta_tiny.state_dict().items()}
    half["module.pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    pth = _save({"model": half, "epoch": 1}, tmp_path / "half.pth")
    model = build_sam_from_checkpoint(cw.convert(pth))
    want = {k[len("module.") :]: v.float().numpy() for k, v in half.items() if "pixel" not in k}
    assert not _params_equal(model, want)
    assert model.parameters_dict()["mask_decoder.iou_token.weight"].dtype == ms.float32


def test_nonstandard_pixel_mean_is_refused(tmp_path: Path, meta_tiny) -> None:
    sd = dict(meta_tiny.state_dict(), pixel_mean=torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match="pixel_mean"):
        cw.convert(_save(sd, tmp_path / "p.pth"))


def test_mismatch_error_names_every_bad_key(tmp_path: Path, meta_tiny) -> None:
    sd = dict(meta_tiny.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra_head.weight"] = torch.ones(3)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.ones(1, 31)
    pth = _save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        cw.convert(pth, model_type="tiny")
    msg = str(info.value)
    assert "1 missing (mask_decoder.iou_token.weight)" in msg
    assert "1 unexpected (mask_decoder.extra_head.weight)" in msg
    assert "prompt_encoder.no_mask_embed.weight (1, 31) vs (1, 32)" in msg
    assert "\n" not in msg
    assert not pth.with_suffix(".ckpt").exists()
    with pytest.raises(ValueError, match="iou_token"):  # loading directly is as strict
        ck.load_checkpoint(build_sam_from_config(TINY), pth)


def test_wrong_model_type_is_named(tiny_pth: Path) -> None:
    with pytest.raises(ValueError) as info:
        cw.convert(tiny_pth, model_type="vit_b")
    msg = str(info.value)
    assert "looks like tiny" in msg and "... and" in msg  # long lists are truncated
    assert len(msg) < 2000


def test_loading_into_another_size_fails_clearly(tiny_pth: Path) -> None:
    out = cw.convert(tiny_pth)
    deeper = build_sam_from_config(dict(TINY, encoder_depth=3))
    with pytest.raises(ValueError, match="another model size.*encoder_depth=2 vs 3"):
        ck.load_checkpoint(deeper, out)
    with pytest.raises(ValueError, match=r"missing \(image_encoder\.blocks\.2\."):
        ck.load_checkpoint(deeper, tiny_pth)
    heads = build_sam_from_config(dict(TINY, decoder_num_heads=4))  # same shapes, other sizes
    with pytest.raises(ValueError, match="decoder_num_heads=2 vs 4"):
        ck.load_checkpoint(heads, out)


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    model = build_sam_from_config(TINY)
    with pytest.raises(FileNotFoundError, match="convert_weight"):
        ck.load_checkpoint(model, tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x0a\x05hello" * 20)
    with pytest.raises(ValueError, match="delete it and convert again"):
        ck.load_checkpoint(model, junk)


def test_save_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_sam_from_config(TINY)
    out = ck.save_checkpoint(model, tmp_path / "m.ckpt")
    params, config = ck.read_checkpoint(out)
    assert config == model.config
    assert not _params_equal(model, params)
    with pytest.raises(ValueError, match=r"end in \.ckpt"):
        ck.save_checkpoint(model, tmp_path / "m.bin")


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_nothing(tiny_pth: Path, monkeypatch, error) -> None:
    good = cw.convert(tiny_pth)
    before = good.read_bytes()

    def broken_save(items, name, **kwargs):
        Path(name).write_bytes(b"half a checkpoint")
        Path(name).with_suffix(".tmp").write_bytes(b"half a checkpoint")
        raise error

    monkeypatch.setattr(ms, "save_checkpoint", broken_save)
    with pytest.raises(type(error)):
        cw.convert(tiny_pth)
    assert sorted(p.name for p in tiny_pth.parent.iterdir()) == [good.name, tiny_pth.name]
    assert good.read_bytes() == before  # the previous good file is untouched
    good.unlink()
    with pytest.raises(type(error)):
        cw.convert(tiny_pth)
    assert [p.name for p in tiny_pth.parent.iterdir()] == [tiny_pth.name]


# --- command line --------------------------------------------------------------------


def test_cli_module_writes_ckpt_beside_input(tiny_pth: Path) -> None:
    root = str(Path(napari_sam_ms.__path__[0]).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "napari_sam_ms.convert_weight", "--torch_path", str(tiny_pth)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert tiny_pth.with_suffix(".ckpt").is_file()
    assert f"wrote {tiny_pth.with_suffix('.ckpt')} (model type tiny)" in done.stdout
    cmd[-1] = str(tiny_pth.parent / "missing.pth")
    failed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("error: no such checkpoint file")


def test_main_exit_codes(tiny_pth: Path, capsys) -> None:
    out = tiny_pth.parent / "x" / "y.ckpt"
    assert cw.main(["--torch_path", str(tiny_pth), "--model_type", "tiny", "--out", str(out)]) == 0
    assert out.is_file()
    assert cw.main(["--torch-path", str(tiny_pth), "--model-type", "vit_q"]) == 1
    assert "unknown model type" in capsys.readouterr().err
    assert cw.main([]) == 2  # usage error
