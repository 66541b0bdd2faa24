"""One predictor's use of its model's :class:`~napari_sam_ms.engine.engine.Engine`.

A :class:`Runner` decides from its settings whether the encoder and decoder run compiled or
op by op, how many prompts go through the transformer at once, and keeps the one cache that
belongs to a predictor's current image: the image side of the transformer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from mindspore import Tensor, ops

from .. import runtime
from ..modeling import Sam
from ..settings import Settings
from .buckets import BUCKETS, pad_points
from .decoder import ClickKey, GraphKey, PromptsKey, RowsKey, TokensKey, UpscaleKey
from .engine import COMPILING, EMBEDDING, PREDICTING, Engine

# Extra launches of a newly compiled single-prompt graph while the user waits for its
# compile anyway: MindSpore's CPU runtime settles over a new graph's first launches.
WARM_LAUNCHES = 14


class Prompts(NamedTuple):
    """The prompts of B objects in the model's input frame; absent kinds are None."""

    coords: np.ndarray | None  # (B, N, 2) float32
    labels: np.ndarray | None  # (B, N) int32
    boxes: np.ndarray | None  # (B, 4) float32
    mask_input: np.ndarray | None  # (B, 1, 4h, 4w) float32

    @property
    def batch_size(self) -> int:
        return len(next(a for a in self if a is not None))

    @property
    def key(self) -> PromptsKey:
        return PromptsKey(
            self.coords is not None, self.boxes is not None, self.mask_input is not None
        )

    def tensors(self) -> list[Tensor]:
        """As Tensors, absent ones as a placeholder (ignored by the decoder)."""
        return [Tensor(np.zeros(1, np.float32)) if a is None else Tensor(a) for a in self]

    def rows(self, start: int, stop: int) -> Prompts:
        """The objects ``start:stop``."""
        return Prompts(*(None if a is None else a[start:stop] for a in self))

    def in_bucket(self) -> tuple[Prompts, np.ndarray]:
        """These prompts with their points padded to a bucket size, and the sparse tokens'
        score bias (see :mod:`napari_sam_ms.engine.buckets`)."""
        padded = pad_points(self.coords, self.labels, self.boxes is not None, self.batch_size)
        return self._replace(coords=padded.coords, labels=padded.labels), padded.token_bias

    def padded(self, n: int) -> Prompts:
        """``n`` objects: the last one repeated as often as needed."""
        short = n - self.batch_size
        return Prompts(
            *(None if a is None else np.concatenate([a, np.repeat(a[-1:], short, 0)]) for a in self)
        )


class ImageRows(NamedTuple):
    """The transformer's image side for prompts without masks, and what it was made from."""

    features: Tensor
    pe: Tensor
    no_mask: np.ndarray
    rows: tuple[Tensor, Tensor]


class Runner:
    """Runs a model's encoder and decoder for one predictor.

    Args:
        model: the model.
        engine: the model's shared engine.
        settings: choose compiled graphs or op by op, the decode chunk, the stage size.
    """

    def __init__(self, model: Sam, engine: Engine, settings: Settings) -> None:
        self.model = model
        self.engine = engine
        self.settings = settings
        self._rows: ImageRows | None = None

    def _whole_model_compiled(self) -> bool:
        return bool(getattr(self.model, "jit_compiled", False))

    @property
    def compiled_encoder(self) -> bool:
        """Whether the encoder runs as the engine's stage graphs."""
        return runtime.encoder_graphs_default(self.settings) and not self._whole_model_compiled()

    @property
    def compiled_decoder(self) -> bool:
        """Whether the prompt encoder and mask decoder run as the engine's graphs."""
        return runtime.decoder_graphs_default(self.settings) and not self._whole_model_compiled()

    def encode(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The image encoder's output for preprocessed images ``x`` (B, 3, S, S): the
        embedding, or (embedding, early features) from an encoder with HQ-SAM fusion."""
        with self.engine.busy(EMBEDDING):
            fused = runtime.fusion_available(self.settings)
            signature = (tuple(x.shape), self.settings.stage_blocks, fused)
            if not self.compiled_encoder or (
                self.engine.defers_compiles and signature not in self.engine.encoder_signatures
            ):
                return self.model.image_encoder(x)
            out = self.engine.encoder_graphs(x, self.settings.stage_blocks, fused)
            self.engine.encoder_signatures.add(signature)
            return out

    def forget_image(self) -> None:
        """Drop what was kept for the previous image."""
        self._rows = None

    def graph(self, key: GraphKey) -> Callable:
        """The decoder function of ``key``: compiled when :attr:`compiled_decoder`; while
        a warm-up compiles in the background, op by op for inputs not compiled yet."""
        graphs = self.engine.decoder_graphs
        if not self.compiled_decoder:
            return graphs.function(key)
        compiled = graphs.graph(key, runtime.fusion_available(self.settings))
        if not self.engine.defers_compiles:
            return compiled
        plain = graphs.function(key)
        return lambda *args: compiled(*args) if compiled.is_compiled(*args) else plain(*args)

    def decode(
        self, features: Tensor, prompts: Prompts, multimask: bool, early: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Low-res mask logits (B, C, 4h, 4w) and IoU predictions (B, C) as Tensors.

        One prompt runs the transformer and the upscaling in one graph; several run staged
        (see :meth:`decode_selected`). ``early``: the image's early encoder features, for
        a decoder with HQ-SAM-style fusion (else None).
        """
        if prompts.batch_size > 1:
            iou, _, low_res = self.decode_selected(features, prompts, multimask, None, early)
            return low_res, Tensor(iou)
        with self.engine.busy(PREDICTING):
            prompts, bias = self._bucketed(prompts)
            click = self.graph(ClickKey(multimask))
            compiled = len(getattr(click, "signatures", ()))
            bias = None if bias is None else Tensor(bias)
            iou, low_res = self._decode_one(features, prompts, multimask, bias, early)
            if len(getattr(click, "signatures", ())) > compiled:
                with self.engine.phase(COMPILING):
                    for _ in range(WARM_LAUNCHES):
                        iou, low_res = self._decode_one(features, prompts, multimask, bias, early)
            return low_res, iou

    def _bucketed(self, prompts: Prompts) -> tuple[Prompts, np.ndarray | None]:
        """Compiled: the prompts padded to a bucket and their token bias; else as given."""
        if not self.compiled_decoder:
            return prompts, None
        return prompts.in_bucket()

    def _decode_one(
        self,
        features: Tensor,
        prompts: Prompts,
        multimask: bool,
        bias: Tensor | None,
        early: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One prompt: the transformer, heads and upscaling in one graph."""
        sparse, dense = self.graph(prompts.key)(*prompts.tensors())
        image, image_pe = self._image_side(features, dense, prompts.key.has_mask)
        return self.graph(ClickKey(multimask))(image, image_pe, sparse, dense, bias, early)

    def decode_selected(
        self,
        features: Tensor,
        prompts: Prompts,
        multimask: bool,
        min_iou: float | None,
        early: Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """IoU predictions of all prompts, and mask logits of those with an IoU above
        ``min_iou`` (None: all).

        Prompts go through the transformer in chunks of ``Settings.decode_chunk`` (a short
        last chunk padded by repeating its last prompt, so one graph serves every chunk);
        the upscaling runs one prompt at a time.

        Returns:
            IoU predictions (B, C), indices (K,) of the prompts whose masks were computed,
            and their low-res logits (K, C, 4h, 4w).
        """
        with self.engine.busy(PREDICTING):
            return self._decode_selected(features, prompts, multimask, min_iou, early)

    def _decode_selected(
        self,
        features: Tensor,
        prompts: Prompts,
        multimask: bool,
        min_iou: float | None,
        early: Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        b = prompts.batch_size
        chunk = 1 if b == 1 else self.settings.decode_chunk
        prompts, bias = self._bucketed(prompts)
        prompts_fn = self.graph(prompts.key)
        tokens_fn = self.graph(TokensKey(multimask, chunk))
        upscale_fn = self.graph(UpscaleKey())
        h, w = self.model.prompt_encoder.image_embedding_size
        ious, selected, lows = [], [], []
        for start in range(0, b, chunk):
            part = prompts.rows(start, start + chunk)
            part_bias = None if bias is None else bias[start : start + chunk]
            n = part.batch_size
            if n < chunk and self.compiled_decoder:
                part = part.padded(chunk)
                part_bias = np.concatenate([part_bias, np.repeat(part_bias[-1:], chunk - n, 0)])
            sparse, dense = prompts_fn(*part.tensors())
            image, image_pe = self._image_side(features, dense, prompts.key.has_mask)
            part_bias = None if part_bias is None else Tensor(part_bias)
            iou, src, hyper_in = tokens_fn(image, image_pe, sparse, dense, part_bias)
            iou = iou.asnumpy()[:n]
            ious.append(iou)
            wanted = np.arange(n) if min_iou is None else np.flatnonzero((iou > min_iou).any(1))
            for i in wanted.tolist():
                lows.append(upscale_fn(src[i : i + 1], hyper_in[i : i + 1], h, w, early))
            selected.append(wanted + start)
        if lows:
            low_res = ops.concat(lows, 0)
        else:
            low_res = Tensor(np.zeros((0, ious[0].shape[1], 4 * h, 4 * w), np.float32))
        return np.concatenate(ious), np.concatenate(selected), low_res

    def _image_side(self, features: Tensor, dense: Tensor, has_mask: bool) -> tuple[Tensor, Tensor]:
        """The transformer's image side as token rows: without mask prompts shared by all
        prompts of an image (:meth:`_image_rows`), with them made per batch."""
        if not has_mask:
            return self._image_rows(features)
        return self.graph(RowsKey())(features, self.engine.decoder_graphs.dense_pe(), dense)

    def _image_rows(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``MaskDecoder.image_rows`` for prompts without masks, kept while the image, the
        no-mask embedding and the positional encoding stay the same."""
        no_mask = self.model.prompt_encoder.no_mask_embed.weight
        pe = self.engine.decoder_graphs.dense_pe()
        values = no_mask.asnumpy()
        kept = self._rows
        if (
            kept is None
            or kept.features is not features
            or kept.pe is not pe
            or not np.array_equal(kept.no_mask, values)
        ):
            rows = self.graph(RowsKey())(features, pe, no_mask.reshape(1, -1, 1, 1))
            kept = self._rows = ImageRows(features, pe, values, rows)
        return kept.rows

    def warm_up(
        self,
        multimask: tuple[bool, ...] = (True,),
        masks: tuple[bool, ...] = (False,),
        objects: tuple[int, ...] = (1,),
        buckets: tuple[int, ...] = BUCKETS,
        stop: Callable[[], bool] | None = None,
        encoder: bool = True,
    ) -> int:
        """Compile the decoder graphs that prompts of these kinds need, on a blank
        embedding, so that no click compiles (with the first clicks' extra launches), and
        the image encoder's graphs.

        Args:
            multimask: output kinds to prepare.
            masks: without (False) and/or with (True) a mask prompt.
            objects: 1 (the single-prompt graphs) and/or more (the chunked graphs of
                ``Settings.decode_chunk`` prompts).
            buckets: sparse-token bucket sizes; every point count that fits the largest
                is then covered, with and without a box, and a box alone.
            stop: asked before each graph; True ends the warm-up early (a background
                warm-up of a model that is no longer wanted).
            encoder: also compile the image encoder's graphs (on a blank image), after the
                single-object decoder graphs.

        While it runs, other threads' calls of graphs not compiled yet run op by op
        (:attr:`Engine.defers_compiles`): a first click during a background warm-up waits
        for no compile.

        Returns:
            The number of graphs compiled (encoder and decoder).
        """
        before = self.engine.compiles
        c = self.model.prompt_encoder.embed_dim
        h, w = self.model.prompt_encoder.image_embedding_size
        features = Tensor(np.zeros((1, c, h, w), np.float32))
        early = None
        if self.model.mask_decoder.hq_fusion:
            early = Tensor(np.zeros((1, self.model.mask_decoder.early_dim, h, w), np.float32))
        steps: list[tuple[Prompts | None, bool]] = []
        if self.compiled_decoder:
            steps = warm_up_prompts(multimask, masks, objects, buckets, (h, w))
        if encoder and self.compiled_encoder:  # after the single-object graphs
            first = sum(1 for prompts, _ in steps if prompts.batch_size == 1)
            steps.insert(first, (None, False))
        kept, self._rows = self._rows, None
        try:
            with self.engine.warming_up():
                for prompts, mm in steps:
                    if stop is not None and stop():
                        break
                    with self.engine.busy(COMPILING, wait_for_users=True):
                        if prompts is None:
                            size = self.model.img_size
                            self.encode(Tensor(np.zeros((1, 3, size, size), np.float32)))
                        elif prompts.batch_size == 1:
                            self.decode(features, prompts, mm, early)
                        else:
                            self.decode_selected(features, prompts, mm, None, early)
        finally:
            self._rows = kept
        return self.engine.compiles - before


def warm_up_prompts(
    multimask: tuple[bool, ...],
    masks: tuple[bool, ...],
    objects: tuple[int, ...],
    buckets: tuple[int, ...],
    embedding_size: tuple[int, int],
) -> list[tuple[Prompts, bool]]:
    """Blank prompts of every kind and bucket that :meth:`Runner.warm_up` compiles for,
    most likely first (one object, small buckets), with their ``multimask``."""
    h, w = embedding_size
    out = []
    for b in objects:
        for has_mask in masks:
            mask = np.zeros((b, 1, 4 * h, 4 * w), np.float32) if has_mask else None
            box = np.zeros((b, 4), np.float32)
            for size in sorted(buckets):
                for mm in multimask:
                    if size == min(buckets):
                        out.append((Prompts(None, None, box, mask), mm))
                    for n, has_box in ((size - 1, False), (size - 2, True)):
                        if n < 1:
                            continue
                        coords = np.zeros((b, n, 2), np.float32)
                        labels = np.ones((b, n), np.int32)
                        out.append((Prompts(coords, labels, box if has_box else None, mask), mm))
    return out


__all__ = ["WARM_LAUNCHES", "ImageRows", "Prompts", "Runner", "warm_up_prompts"]
