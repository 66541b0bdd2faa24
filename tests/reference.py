"""Access to Meta's reference implementation (PyPI ``segment-anything``) for parity tests.

``segment_anything/__init__.py`` imports the predictor, which needs torchvision; the model
code itself needs only torch. ``load_reference_modeling`` imports ``segment_anything.modeling``
without running the package ``__init__``, and ``load_mobile_sam`` does the same for MobileSAM's
code (PyPI ``mobilesam-mirror``, which also needs timm).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np


def _load_package_part(package: str, part: str, extra: str):
    """Import ``package.part`` without running ``package/__init__.py`` (which needs
    torchvision through the reference predictor) unless it has run already."""
    name = f"{package}.{part}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{extra} is not installed (pip install -e '.[test]')")
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = str(Path(pkg.__path__[0]) / "__init__.py")
        pkg.__spec__ = spec
        sys.modules[package] = pkg
    return importlib.import_module(name)


def load_reference_modeling():
    """Return Meta's ``segment_anything.modeling`` module (needs torch only)."""
    return _load_package_part("segment_anything", "modeling", "segment-anything")


def load_mobile_sam(part: str = "build_sam"):
    """Return a module of MobileSAM's code (PyPI ``mobilesam-mirror``; torch and timm)."""
    return _load_package_part("mobile_sam", part, "mobilesam-mirror")


def build_reference_sam(cfg: dict, seed: int = 0):
    """Meta's Sam with the size arguments of one of our CONFIGS, random weights.

    All parameters (including the ones Meta initialises to zero, like ``pos_embed`` and
    ``rel_pos_*``) are filled with random values so that every weight is exercised.
    """
    import torch

    m = load_reference_modeling()
    image_size = cfg.get("image_size", 1024)
    patch = cfg.get("patch_size", 16)
    embed = cfg.get("prompt_embed_dim", 256)
    torch.manual_seed(seed)
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=cfg["encoder_depth"],
            embed_dim=cfg["encoder_embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["encoder_num_heads"],
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(cfg["encoder_global_attn_indexes"]),
            window_size=cfg.get("window_size", 14),
            out_chans=embed,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=embed,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=cfg.get("mask_in_chans", 16),
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(
                depth=2,
                embedding_dim=embed,
                mlp_dim=cfg.get("decoder_mlp_dim", 2048),
                num_heads=cfg.get("decoder_num_heads", 8),
            ),
            transformer_dim=embed,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.get("iou_head_hidden_dim", 256),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    gen = torch.Generator().manual_seed(seed + 1)
    kinds = {}
    for mod_name, mod in sam.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            kinds[f"{mod_name}.{p_name}"] = type(mod).__name__
    with torch.no_grad():
        for name, p in sam.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            kind = kinds[name]
            if "Norm" in kind:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif kind in ("Linear", "Conv2d", "ConvTranspose2d") and p.ndim >= 2:
                # Variance-preserving scale keeps activations O(1) through the layers.
                fan_in = p.shape[0] if kind == "ConvTranspose2d" else p[0].numel()
                p.copy_(noise / fan_in**0.5)
            elif kind == "Embedding":
                p.copy_(noise)
            else:  # biases, absolute and relative position tables
                p.copy_(0.1 * noise)
        # Large mask logits, so thresholding at 0 is decided far from rounding noise.
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(10.0)
    sam.eval()
    return sam


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    """A torch module's state_dict as numpy arrays."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def assert_masks_match(
    ours: np.ndarray, ref: np.ndarray, ref_logits: np.ndarray, rel_tol: float = 1e-5
) -> None:
    """Thresholded masks are identical, except at pixels whose reference logit is a tie.

    A pixel may differ only where the reference logit lies within ``rel_tol`` times the
    largest logit of the threshold 0 (float32 rounding decides those: a compiled graph and
    op-by-op execution sum in different orders); at most one pixel in ten thousand.
    """
    differ = np.asarray(ours) != np.asarray(ref)
    tie = np.abs(ref_logits) <= rel_tol * np.abs(ref_logits).max()
    assert not (differ & ~tie).any(), (
        f"{int((differ & ~tie).sum())} mask pixels differ where the reference logit is not a tie"
    )
    assert differ.mean() <= 1e-4, f"{int(differ.sum())} of {differ.size} mask pixels are ties"
