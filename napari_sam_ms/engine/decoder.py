"""The prompt encoder and mask decoder as functions of Tensors, and their compiled graphs.

Each graph kind has a named key: :class:`PromptsKey` (the prompt encoder for one prompt
kind), :class:`TokensKey` (the mask decoder up to the output upscaling, for chunks of
prompts), :class:`ClickKey` (the whole decoder for one prompt), :class:`UpscaleKey` (the
output upscaling and hypernetwork product) and :class:`RowsKey` (the image side of the
transformer). :func:`decoder_part` makes the function of a key; :class:`DecoderGraphs`
keeps their compiled graphs for a model. :func:`decode_fn` is the prompt encoder and
decoder as one function for training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from mindspore import Tensor

from .. import runtime
from ..modeling import MaskDecoder, PromptEncoder, Sam


class PromptsKey(NamedTuple):
    """The prompt encoder for one prompt kind."""

    has_points: bool
    has_box: bool
    has_mask: bool


class TokensKey(NamedTuple):
    """The mask decoder up to the output upscaling, for chunks of ``chunk`` prompts."""

    multimask: bool
    chunk: int


class ClickKey(NamedTuple):
    """The mask decoder with the output upscaling, for one prompt."""

    multimask: bool


class UpscaleKey(NamedTuple):
    """The output upscaling and hypernetwork product (``MaskDecoder.upscale_masks``)."""


class RowsKey(NamedTuple):
    """The image side of the transformer (``MaskDecoder.image_rows``)."""


GraphKey = PromptsKey | TokensKey | ClickKey | UpscaleKey | RowsKey


def _outputs(multimask: bool) -> str:
    return "multimask" if multimask else "single"


def decoder_part(prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, key: GraphKey):
    """The function of Tensors that ``key`` names (see the module docstring)."""
    if isinstance(key, PromptsKey):
        return prompt_fn(prompt_encoder, *key)
    if isinstance(key, ClickKey):
        outputs = _outputs(key.multimask)
        h, w = prompt_encoder.image_embedding_size

        def click(image, image_pe, sparse, dense, token_bias=None, early=None):
            iou, src, hyper_in = mask_decoder.predict_tokens(
                image, image_pe, sparse, dense, outputs, token_bias
            )
            return iou, mask_decoder.upscale_masks(src, hyper_in, h, w, early)

        return click
    if isinstance(key, TokensKey):
        outputs = _outputs(key.multimask)

        def tokens(image, image_pe, sparse, dense, token_bias=None):
            return mask_decoder.predict_tokens(image, image_pe, sparse, dense, outputs, token_bias)

        return tokens
    if isinstance(key, RowsKey):

        def rows(features, pe, dense):
            return mask_decoder.image_rows(features, pe, dense)

        return rows

    def upscale(src, hyper_in, h, w, early=None):
        return mask_decoder.upscale_masks(src, hyper_in, h, w, early)

    return upscale


def prompt_fn(prompt_encoder: PromptEncoder, has_points: bool, has_box: bool, has_mask: bool):
    """The prompt encoder for one prompt kind, as a function of Tensors (absent prompts are
    ignored placeholders) returning the sparse and dense embeddings. Without mask prompts
    the dense embedding is the no-mask vector (1, C, 1, 1), added by broadcasting, so the
    decoder handles the image side once for the whole batch."""

    def prompts(coords, labels, boxes, mask_input):
        sparse, dense = prompt_encoder(
            (coords, labels) if has_points else None,
            boxes if has_box else None,
            mask_input if has_mask else None,
        )
        if not has_mask:
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return sparse, dense

    return prompts


def decode_fn(model: Sam, key: PromptsKey, multimask: bool) -> Callable:
    """Prompt encoder (:func:`prompt_fn`) + mask decoder for one prompt kind, as one function
    of Tensors ``decode(features, coords, labels, boxes, mask_input, image_pe=None,
    early=None)`` that training differentiates and compiles. ``features`` has batch 1 or B;
    ``image_pe`` is the prompt encoder's ``get_dense_pe()``, made when not given; ``early``
    the early encoder features of a decoder with HQ-SAM-style fusion.

    Returns:
        the function, which returns low-res logits (B, C, 4h, 4w) and IoU predictions (B, C).
    """
    encode_prompts = prompt_fn(model.prompt_encoder, *key)

    def decode(features, coords, labels, boxes, mask_input, image_pe=None, early=None):
        sparse, dense = encode_prompts(coords, labels, boxes, mask_input)
        if image_pe is None:
            image_pe = model.prompt_encoder.get_dense_pe()
        return model.mask_decoder(features, image_pe, sparse, dense, multimask, early)

    return decode


class DecoderGraphs:
    """The compiled decoder graphs of one model and its dense positional encoding.

    Graphs read the model's current weights at every call; the positional encoding is
    remade when the prompt encoder's random Fourier matrix changes. The click and token
    graphs take the sparse tokens' score bias (``token_bias``) as their last input.

    Args:
        prompt_encoder: the model's prompt encoder.
        mask_decoder: the model's mask decoder.
        compiling: context manager factory entered around each compile (see
            :class:`~napari_sam_ms.runtime.FusedGraph`).
    """

    def __init__(
        self,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.compiling = compiling
        self.graphs: dict[tuple[type, GraphKey, bool], runtime.FusedGraph] = {}
        self._pe: tuple[np.ndarray, Tensor] | None = None

    def function(self, key: GraphKey) -> Callable:
        """The op-by-op function of ``key``."""
        return decoder_part(self.prompt_encoder, self.mask_decoder, key)

    def graph(self, key: GraphKey, fused: bool) -> Callable:
        """The compiled graph of ``key`` (made on first use). ``fused`` compiles with graph
        kernel fusion; the prompt encoder's graph never is (with fusion, MindSpore 2.10
        computes it wrongly on CPU), nor is the rows graph (it got a broadcast sum wrong)."""
        fused = fused and not isinstance(key, PromptsKey | RowsKey)
        entry = (type(key), key, fused)
        if entry not in self.graphs:
            fn = self.function(key)
            self.graphs[entry] = runtime.FusedGraph(fn, fused, self.compiling)
        return self.graphs[entry]

    @property
    def compiles(self) -> int:
        """Graphs compiled so far: one per graph and input signature."""
        return sum(len(g.signatures) for g in self.graphs.values())

    def __contains__(self, key: GraphKey) -> bool:
        return any(k is type(key) and g == key for k, g, _ in self.graphs)

    def __len__(self) -> int:
        return len(self.graphs)

    def dense_pe(self) -> Tensor:
        """The prompt encoder's ``get_dense_pe()``, kept while its Fourier matrix is
        unchanged (it depends on nothing else)."""
        pe_layer = self.prompt_encoder.pe_layer
        matrix = pe_layer.positional_encoding_gaussian_matrix.asnumpy()
        if self._pe is None or not np.array_equal(self._pe[0], matrix):
            self._pe = (matrix.copy(), self.prompt_encoder.get_dense_pe())
        return self._pe[1]


__all__ = [
    "ClickKey",
    "DecoderGraphs",
    "GraphKey",
    "PromptsKey",
    "RowsKey",
    "TokensKey",
    "UpscaleKey",
    "decode_fn",
    "decoder_part",
    "prompt_fn",
]
