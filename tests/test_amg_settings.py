"""The whole-image settings table is the one source of defaults, stages and help text."""

from __future__ import annotations

import argparse
import inspect

import pytest

from napari_sam_ms import amg_settings
from napari_sam_ms.amg_refine import FILTER_ARGS, filter_candidates
from napari_sam_ms.amg_settings import (
    META_DEFAULTS,
    SETTINGS,
    add_cli_options,
    from_cli,
    help_text,
    model_defaults,
    model_overrides,
    names,
)
from napari_sam_ms.automatic_mask_generator import RUN_ARGS, SamAutomaticMaskGenerator
from napari_sam_ms.cli import main
from napari_sam_ms.pipeline import AMG_DEFAULTS, amg_parameter_names, make_generator
from napari_sam_ms.weights import mirror_average_default, whole_image_settings


def _squeeze(text: str) -> str:
    """Text without whitespace (argparse wraps lines, also at hyphens)."""
    return "".join(text.split())


def test_table_defaults_are_the_generator_signature():
    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    args = {n: p.default for n, p in params.items() if n not in ("self", "model")}
    assert args == META_DEFAULTS
    assert list(args) == list(SETTINGS) == amg_parameter_names()
    assert AMG_DEFAULTS == META_DEFAULTS
    # Meta's numbers (segment_anything/automatic_mask_generator.py)
    assert META_DEFAULTS["pred_iou_thresh"] == 0.88
    assert META_DEFAULTS["stability_score_thresh"] == 0.95
    assert META_DEFAULTS["crop_overlap_ratio"] == 512 / 1500
    # ours, off by default
    assert META_DEFAULTS["mask_overlap_thresh"] == 1.0 and META_DEFAULTS["mirror_average"] is False
    for name in SETTINGS:
        assert help_text(name) in (SamAutomaticMaskGenerator.__doc__ or ""), name


def test_stages_split_the_table():
    run, flt = names("run"), names("filter")
    assert set(run) | set(flt) == set(SETTINGS) and not set(run) & set(flt)
    assert {"points_per_side", "crop_n_layers", "mirror_average"} <= set(run)
    assert set(FILTER_ARGS) == set(flt) - {"output_mode"}
    assert set(RUN_ARGS) == set(run) - {"point_grids"}
    params = inspect.signature(filter_candidates).parameters
    assert [n for n in params if n != "candidates"] == list(FILTER_ARGS)
    r, f = amg_settings.split({"points_per_side": 8, "box_nms_thresh": 0.5})
    assert r == {"points_per_side": 8} and f == {"box_nms_thresh": 0.5}
    with pytest.raises(ValueError):
        names("later")


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown whole-image parameter\(s\) nope; valid ones"):
        make_generator(None, nope=1)
    with pytest.raises(TypeError, match="points_per_side"):
        amg_settings.split({"nope": 1})


def test_micro_overrides_come_from_the_registry():
    own = whole_image_settings("micro")
    assert own and mirror_average_default("micro")
    micro = model_defaults("micro")
    assert micro == {**META_DEFAULTS, **own, "mirror_average": True}
    assert micro["pred_iou_thresh"] != META_DEFAULTS["pred_iou_thresh"]
    assert model_defaults("sam_ms_micro") == micro
    assert model_overrides("micro") == {**own, "mirror_average": True}
    for other in ("vit_b", "vit_h", "tiny", "no_such_model"):
        assert model_defaults(other) == META_DEFAULTS and model_overrides(other) == {}


def test_cli_help_comes_from_the_table(capsys):
    assert main(["segment", "--help"]) == 0
    out = _squeeze(capsys.readouterr().out)
    exposed = names(exposed=True)
    assert "point_grids" not in exposed and "output_mode" not in exposed
    for name in exposed:
        assert _squeeze(help_text(name)) in out, name
        assert f"--{name.replace('_', '-')}" in out
    micro = model_defaults("micro")
    assert _squeeze(f"(default: 0.88; {micro['pred_iou_thresh']:.4g} for the micro model)") in out
    assert _squeeze("(default: off; on for the micro model)") in out


def test_cli_values_given_else_model_defaults_else_meta():
    parser = argparse.ArgumentParser()
    add_cli_options(parser, hidden=parser)
    micro = model_defaults("micro")
    args = parser.parse_args(["--points-per-side", "8", "--box_nms_thresh", "0.5"])
    got = from_cli(args, micro)
    assert list(got) == names(exposed=True)
    assert got["points_per_side"] == 8 and got["box_nms_thresh"] == 0.5
    assert got["pred_iou_thresh"] == micro["pred_iou_thresh"] and got["mirror_average"] is True
    assert from_cli(parser.parse_args(["--no-mirror-average"]), micro)["mirror_average"] is False
    meta = from_cli(parser.parse_args([]), {})
    assert meta == {k: META_DEFAULTS[k] for k in names(exposed=True)}
    assert type(meta["min_mask_region_area"]) is int


def test_invert_is_ours_a_run_setting_and_a_cli_switch():
    s = SETTINGS["invert"]
    assert (s.stage, s.kind, s.default, s.ours) == ("run", bool, False, True)
    assert "invert" in RUN_ARGS and "invert" in names("run", exposed=True)
    assert "Not in Meta's SAM." in help_text("invert")
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    assert from_cli(parser.parse_args(["--invert"]), {})["invert"] is True
    assert from_cli(parser.parse_args([]), model_defaults("micro"))["invert"] is False
