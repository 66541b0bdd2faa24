"""One loader: the same model choice makes the same decision at every front door.

The doors are the pipeline, the command line (``segment`` and ``finetune``), the widgets'
model holder and fine-tuning (the fine-tune widget's fresh copy). Each choice must give the
same predictor kind, the same whole-image defaults, the same note, or the same refusal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from napari_sam_ms import cli
from napari_sam_ms.amg_settings import META_DEFAULTS, model_defaults
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import (
    RANDOM_WEIGHTS_NOTE,
    LoadedModel,
    ModelLoadError,
    describe_model,
    load_model,
    make_predictor,
)
from napari_sam_ms.mirror_average import MirrorAveragedPredictor
from napari_sam_ms.pipeline import make_generator, pipeline
from napari_sam_ms.predictor import SamPredictor
from napari_sam_ms.training.finetune import starting_model
from napari_sam_ms.weights import default_model_type
from napari_sam_ms.weights.checkpoint import save_checkpoint


class Decision(NamedTuple):
    """What a front door made of a choice."""

    model_type: str
    predictor: str  # class name of the predictor it runs
    defaults: dict[str, Any]  # whole-image defaults (the names the command line offers)
    note: str


def _exposed(defaults: dict[str, Any]) -> dict[str, Any]:
    names = cli.whole_image_params(_segment_args(None, None), {}).keys()
    return {k: defaults[k] for k in names}


def _segment_args(model: str | None, checkpoint: Path | None) -> argparse.Namespace:
    """``segment``'s options for a choice (no whole-image option given)."""
    return argparse.Namespace(
        model=model, checkpoint=None if checkpoint is None else str(checkpoint)
    )


def _from_record(loaded: LoadedModel, predictor: Any) -> Decision:
    defaults = _exposed(dict(loaded.whole_image_defaults))
    return Decision(loaded.model_type, type(predictor).__name__, defaults, loaded.note)


def via_pipeline(model, checkpoint) -> Decision:
    task = pipeline("segment_anything", model=model, checkpoint=checkpoint)
    return _from_record(task.loaded, task.predictor)._replace(
        defaults=_exposed(task.whole_image_defaults)
    )


def via_cli(model, checkpoint) -> Decision:
    """``segment``'s loading, its whole-image parameters and its generator's predictor."""
    args = _segment_args(model, checkpoint)
    loaded = cli.open_model(args)
    params = cli.whole_image_params(args, cli.model_info(loaded))
    generator = make_generator(loaded.model, **{**params, "points_per_side": 2})
    return Decision(loaded.model_type, type(generator.predictor).__name__, params, loaded.note)


def via_holder(model, checkpoint) -> Decision:
    """The prompt and automatic widgets' holder."""
    held = ModelHolder(model, None if checkpoint is None else str(checkpoint)).get()
    return _from_record(held.loaded, held.predictor)


def via_finetune(model, checkpoint) -> Decision:
    """The fine-tune widget's fresh copy; ``napari-sam-ms finetune --model`` when the choice
    is one name or one file."""
    loaded = ModelHolder(model, None if checkpoint is None else str(checkpoint)).load_fresh()
    if (model is None) != (checkpoint is None):
        again = starting_model(str(checkpoint or model))
        assert (again.model_type, again.mirror_average) == (
            loaded.model_type,
            loaded.mirror_average,
        )
    return _from_record(loaded, make_predictor(loaded))


DOORS = {"pipeline": via_pipeline, "cli": via_cli, "holder": via_holder, "finetune": via_finetune}


def _decisions(model, checkpoint) -> dict[str, Decision]:
    return {name: door(model, checkpoint) for name, door in DOORS.items()}


def _refusals(model, checkpoint) -> dict[str, str]:
    messages = {}
    for name, door in DOORS.items():
        with pytest.raises(ModelLoadError) as info:
            door(model, checkpoint)
        messages[name] = str(info.value)
    return messages


# --------------------------------------------------------------------- choices
@pytest.fixture(autouse=True)
def _no_official_weights(use_settings, tmp_path_factory):
    use_settings(weights_dir=str(tmp_path_factory.mktemp("weights")))
    assert default_model_type() == "micro"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An official type (tiny) with a generated checkpoint."""
    model = load_model("tiny").model
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "tiny.ckpt")


@pytest.fixture(scope="module")
def tuned_micro(tmp_path_factory) -> Path:
    """A fine-tuned embedded model: a micro-sized .ckpt of our own."""
    model = load_model("micro").model
    return save_checkpoint(model, tmp_path_factory.mktemp("tuned") / "my_micro.ckpt")


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "broken.ckpt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    return path


def _assert_same(decisions: dict[str, Decision]) -> Decision:
    first = decisions["pipeline"]
    for name, got in decisions.items():
        assert got == first, (name, got, first)
    return first


MICRO = "MirrorAveragedPredictor"
PLAIN = "SamPredictor"


@pytest.mark.parametrize("model", [None, "tiny"])
def test_official_type_with_a_generated_checkpoint(tiny_ckpt, model):
    got = _assert_same(_decisions(model, tiny_ckpt))
    assert got == Decision("tiny", PLAIN, _exposed(META_DEFAULTS), "")


def test_meta_pth_of_the_named_size(tiny_pth):
    got = _assert_same(_decisions("tiny", tiny_pth))
    assert got == Decision("tiny", PLAIN, _exposed(META_DEFAULTS), "")


@pytest.mark.parametrize("model", [None, "micro", "sam_ms_micro"])
def test_embedded_default(model):
    got = _assert_same(_decisions(model, None))
    assert got == Decision("micro", MICRO, _exposed(model_defaults("micro")), "")
    assert got.defaults["pred_iou_thresh"] != META_DEFAULTS["pred_iou_thresh"]


@pytest.mark.parametrize("model", [None, "micro"])
def test_fine_tuned_embedded_checkpoint_is_treated_as_the_embedded_model(tuned_micro, model):
    """Mirror-averaged, with the micro model's whole-image filters, at every door."""
    got = _assert_same(_decisions(model, tuned_micro))
    assert got == Decision("micro", MICRO, _exposed(model_defaults("micro")), "")


def test_checkpoint_of_another_size_is_refused_alike(tuned_micro):
    messages = _refusals("tiny", tuned_micro)
    assert len(set(messages.values())) == 1, messages
    text = messages["pipeline"]
    assert f"{tuned_micro} holds a SAM micro model, not tiny" in text
    assert "choose the model type micro" in text and "no model type" in text


@pytest.mark.parametrize("model", [None, "micro"])
def test_corrupt_file_is_refused_alike(corrupt, model):
    messages = _refusals(model, corrupt)
    assert len(set(messages.values())) == 1, messages
    assert str(corrupt) in messages["pipeline"] and "Check that the file" in messages["pipeline"]


def test_missing_file_is_refused_alike(tmp_path):
    messages = _refusals("micro", tmp_path / "nope.ckpt")
    assert len(set(messages.values())) == 1, messages
    assert "does not exist" in messages["pipeline"]


def test_unknown_name_is_refused_alike():
    messages = _refusals("vit_x", None)
    assert len(set(messages.values())) == 1, messages
    assert "unknown model type 'vit_x'" in messages["pipeline"]


def test_tiny_without_checkpoint_is_random_everywhere():
    got = _assert_same(_decisions("tiny", None))
    assert got == Decision("tiny", PLAIN, _exposed(META_DEFAULTS), RANDOM_WEIGHTS_NOTE)
    a, b = load_model("tiny"), load_model("tiny")
    assert a.random_weights and a.checkpoint is None and a.checkpoint_sha256 is None
    assert a.cache_id != b.cache_id  # random weights never share cached embeddings


def test_the_command_lines_print_the_same_refusal(tuned_micro, tmp_path, capsys):
    expected = str(_refusals("tiny", tuned_micro)["pipeline"])
    argv = ["segment", "x.png", "--out", str(tmp_path), "--model", "tiny"]
    assert cli.main([*argv, "--checkpoint", str(tuned_micro)]) == 2
    assert capsys.readouterr().err.strip() == f"{cli.PROG}: error: {' '.join(expected.split())}"


def test_record_fields(tuned_micro):
    from napari_sam_ms.embedding_cache import model_id
    from napari_sam_ms.weights import sha256_of

    loaded = load_model(None, tuned_micro)
    assert loaded.checkpoint == tuned_micro.resolve()
    assert loaded.checkpoint_sha256 == sha256_of(tuned_micro)
    assert loaded.cache_id == model_id("micro", tuned_micro)
    assert loaded.mirror_average and not loaded.random_weights and not loaded.registered
    with pytest.raises(TypeError):
        loaded.whole_image_defaults["pred_iou_thresh"] = 0.5  # read-only
    assert load_model("micro").registered
    predictor = make_predictor(loaded)
    assert isinstance(predictor, MirrorAveragedPredictor)
    held = ModelHolder("micro", str(tuned_micro)).get()
    assert held.model_id == loaded.cache_id + "+mirror4"


def test_a_built_model_keeps_metas_defaults(tiny_ckpt):
    sam = load_model(None, tiny_ckpt).model
    given = describe_model(sam)
    assert given.model_type == "tiny" and dict(given.whole_image_defaults) == META_DEFAULTS
    assert type(make_predictor(given)) is SamPredictor
    assert type(pipeline("segment_anything", model=sam).predictor) is SamPredictor
