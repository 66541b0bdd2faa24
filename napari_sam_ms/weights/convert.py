"""Convert PyTorch SAM checkpoints (``.pth``) to MindSpore (``.ckpt``) without torch.

Meta's SAM, MobileSAM's ``mobile_sam.pt`` and micro-sam's models are accepted (:mod:`.layouts`).
:func:`convert` reads the state dict (:mod:`.pth_reader`), works out the model size from
the parameter shapes (or takes ``model_type``), checks every key and shape against that
size, and writes ``<name>.ckpt`` atomically with the size arguments stored inside
(:mod:`.checkpoint`).

Command line (the model card's form)::

    python -m napari_sam_ms.convert_weight --torch_path path/sam_vit_b_01ec64.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .checkpoint import check_param_shapes, save_checkpoint
from .config import CONFIGS
from .layouts import read_sam_state_dict
from .shapes import expected_shapes, resolve_config

__all__ = ["convert", "default_output", "main"]

PathLike = str | os.PathLike

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------


def default_output(torch_path: PathLike) -> Path:
    """``path/name.pth`` -> ``path/name.ckpt``."""
    return Path(torch_path).with_suffix(".ckpt")


def convert(
    torch_path: PathLike, out_path: PathLike | None = None, model_type: str | None = None
) -> Path:
    """Convert a Meta SAM ``.pth`` to a MindSpore ``.ckpt`` and return its path.

    Args:
        torch_path: the ``.pth`` written by ``torch.save`` (Meta's, MobileSAM's and
            micro-sam's checkpoints included).
        out_path: where to write; default ``<torch_path without suffix>.ckpt`` beside it.
        model_type: ``vit_b``/``vit_l``/``vit_h``/``tiny`` (or ``sam_vit_b``); detected from
            the shapes when None.

    Raises:
        FileNotFoundError: ``torch_path`` does not exist.
        ValueError: unreadable file, or keys/shapes that do not fit the model (all named).
    """
    return _convert(torch_path, out_path, model_type)[0]


def _convert(
    torch_path: PathLike, out_path: PathLike | None, model_type: str | None
) -> tuple[Path, str]:
    """:func:`convert`, also returning the model type written."""
    state = read_sam_state_dict(torch_path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    name, config = resolve_config(shapes, model_type)
    if name == "custom":
        logger.warning("%s has a custom size; decoder_num_heads assumed to be 8", torch_path)
    check_param_shapes(shapes, expected_shapes(config), source=f"{torch_path} ({name})")
    out = Path(out_path) if out_path is not None else default_output(torch_path)
    save_checkpoint(state, out, config=config)
    logger.info("converted %s to %s (model type %s)", torch_path, out, name)
    return out, name


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a PyTorch SAM checkpoint (.pth) to MindSpore (.ckpt)."
    )
    parser.add_argument("--torch_path", "--torch-path", required=True, help="input .pth file")
    parser.add_argument(
        "--model_type",
        "--model-type",
        default=None,
        help=f"one of {sorted(CONFIGS)} (default: detected from the weights)",
    )
    parser.add_argument("--out", default=None, help="output .ckpt (default: beside the input)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success)."""
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return int(exc.code or 0)
    try:
        out, name = _convert(args.torch_path, args.out, args.model_type)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (model type {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
