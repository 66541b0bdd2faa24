"""``napari-sam-ms finetune``: a tiny model fine-tuned end to end from files, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam_ms.cli import main

SIZE = 128  # the tiny model's input side
FAST = ["--steps", "3", "--correction-rounds", "0", "--batch-images", "1"]
FAST += ["--objects-per-image", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[list[str], list[str]]:
    """Two synthetic images with their label files (TIFF)."""
    from napari_sam_ms.training.synthetic import render_sample

    folder = tmp_path_factory.mktemp("data")
    images, labels = [], []
    for seed in range(2):
        s = render_sample(seed, "cells", (SIZE, SIZE), scale=1.0)
        tifffile.imwrite(folder / f"img{seed}.tif", s.image)
        tifffile.imwrite(folder / f"img{seed}_labels.tif", s.labels)
        images.append(str(folder / f"img{seed}.tif"))
        labels.append(str(folder / f"img{seed}_labels.tif"))
    return images, labels


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-weight tiny model saved as a checkpoint (with its size config)."""
    import mindspore as ms

    from napari_sam_ms.build_sam import sam_model_registry
    from napari_sam_ms.weights.checkpoint import save_checkpoint

    ms.set_seed(0)
    model = sam_model_registry["tiny"]()
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    return save_checkpoint(model, path, config=model.config)


def _params(path: Path) -> dict[str, np.ndarray]:
    from napari_sam_ms.build_sam import build_sam_from_checkpoint

    model = build_sam_from_checkpoint(path)
    return {k: v.asnumpy() for k, v in model.parameters_dict().items()}


def test_finetune_trains_saves_and_refuses_to_overwrite(data, tiny_ckpt, tmp_path, capsys):
    images, labels = data
    out = tmp_path / "models" / "tuned.ckpt"
    argv = ["finetune", *images, "--labels", *labels, "--model", str(tiny_ckpt)]
    argv += ["--out", str(out), *FAST, "--mask-chunk", "1"]  # 2 objects: chunks of 1
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # held-out figures before training and after each validation, then the summary
    for step in (0, 3):
        assert re.search(
            rf"^step {step}/3: .*held-out mIoU point \d\.\d{{3}}, box \d\.\d{{3}} \(\d+ objects\)",
            printed,
            re.M,
        ), printed
    assert "done after 3 steps" in printed and str(out) in printed
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["steps_done"] == 3 and not log["cancelled"]
    assert [v["step"] for v in log["validation"]][0] == 0 and log["validation"][-1]["step"] == 3

    # the checkpoint loads with its size; the decoder moved, the frozen encoder did not
    before, after = _params(tiny_ckpt), _params(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any(k.startswith("mask_decoder.") for k in changed)
    assert not any(k.startswith("image_encoder.") for k in changed)

    # a second run does not replace it without --overwrite
    stamp = (out.stat().st_mtime_ns, out.read_bytes())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists: pass --overwrite to replace it" in err and str(out) in err
    assert (out.stat().st_mtime_ns, out.read_bytes()) == stamp


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, i, lab: [*i, "--labels", lab[0]], "2 images but 1 label files"),
        (lambda a, i, lab: [i[0], "--labels", lab[0], "--steps", "0"], "--steps must be"),
        (lambda a, i, lab: [i[0], "--labels", lab[0], "--val-fraction", "1"], "--val-fraction"),
        (lambda a, i, lab: [a / "missing.tif", "--labels", lab[0]], "no such file"),
        (lambda a, i, lab: [i[0], "--labels", lab[0], "--mask-chunk", "-1"], "--mask-chunk"),
    ],
    ids=["counts", "steps", "val-fraction", "missing-image", "mask-chunk"],
)
def test_finetune_bad_input_exits_2(data, tiny_ckpt, tmp_path, capsys, change, message):
    images, labels = data
    out = tmp_path / "m.ckpt"
    args = [str(a) for a in change(tmp_path, images, labels)]
    argv = ["finetune", *args, "--model", str(tiny_ckpt), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-sam-ms finetune: error:") and message in err, err
    assert not out.exists()


def test_finetune_out_must_be_a_ckpt(data, tmp_path, capsys):
    images, labels = data
    argv = ["finetune", images[0], "--labels", labels[0], "--model", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "m.pth")]) == 2
    assert "--out: the model file must end in .ckpt" in capsys.readouterr().err


def test_help_lists_finetune(capsys):
    assert main(["--help"]) == 0
    assert "finetune" in capsys.readouterr().out
    assert main(["finetune", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: napari-sam-ms finetune") and "--overwrite" in text
