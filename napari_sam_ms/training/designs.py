"""The candidate designs of the embedded default model, built for training from scratch.

``micro``
is today's default (a plain ViT, 8-pixel patches: a 32x32 token grid; from scratch it starts at
16-pixel patches, see :mod:`.default_model`); ``micro_t`` is a small TinyViT (MobileSAM's
encoder) whose stages keep a 64x64 grid on 256-pixel input, so the decoder's masks are at input
resolution; ``micro_t_hq`` adds HQ-SAM-style fusion of the first stage's features into the mask
features; ``micro_t8``/``micro_t8_hq`` are the same with the last two stages on a 32x32 grid
(micro's decoder cost; the fused features stay 64x64). All keep SAM's prompt encoder and mask
decoder (micro's sizes), so the predictor, widgets, whole-image mode and fine-tuning work
unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..weights.config import CONFIGS

PE_SCALE = 1.0  # std of the prompt encoder's random Fourier matrix (Meta's default)
QK_GAIN = 4.0  # decoder attention: query and key projections start tied and scaled by this

DESIGNS: tuple[str, ...] = ("micro", "micro_t", "micro_t_hq", "micro_t8", "micro_t8_hq")


def design_config(design: str, patch_size: int | None = None) -> dict[str, Any]:
    """The size arguments of a design (``patch_size``: ViT designs only)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose one of {DESIGNS}")
    config = dict(CONFIGS[design])
    if patch_size is not None:
        if config.get("encoder", "vit") != "vit":
            raise ValueError(f"design {design!r} has no patch size (a TinyViT encoder)")
        config["patch_size"] = patch_size
    return config


def build_design(design: str, seed: int = 0, patch_size: int | None = None):
    """A seeded random model of ``design`` with the default model's starting values
    (:func:`init_for_training`)."""
    import mindspore as ms

    from ..build_sam import build_sam_from_config

    ms.set_seed(seed)
    return init_for_training(build_sam_from_config(design_config(design, patch_size)), seed)


def init_for_training(model, seed: int = 0, pe_scale: float = PE_SCALE, qk_gain: float = QK_GAIN):
    """Starting values that let the prompt's position reach the mask (same architecture).

    - The prompt encoder's random Fourier matrix (a stored buffer, part of the checkpoint)
      is drawn with std ``pe_scale`` (reproducible from ``seed``).
    - In every decoder attention the key projection starts equal to the query projection,
      both scaled by ``qk_gain``: a query then attends sharply to keys at positions like its
      own (why these values: docs/training.md).

    Returns:
        ``model``, changed in place.
    """
    import mindspore as ms

    rng = np.random.default_rng([seed, 1])
    g = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    g.set_data(ms.Tensor((rng.standard_normal(g.shape) * pe_scale).astype(np.float32)))
    for _, cell in model.mask_decoder.transformer.cells_and_names():
        if hasattr(cell, "q_proj") and hasattr(cell, "k_proj"):
            w = cell.q_proj.weight.asnumpy() * qk_gain
            cell.q_proj.weight.set_data(ms.Tensor(w))
            cell.k_proj.weight.set_data(ms.Tensor(w.copy()))
    return model


__all__ = ["DESIGNS", "PE_SCALE", "QK_GAIN", "build_design", "design_config", "init_for_training"]
