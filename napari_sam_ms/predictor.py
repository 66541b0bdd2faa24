"""Interactive prediction: embed an image once, then predict masks for prompts
(mirrors ``segment_anything/predictor.py``).

The image embedding is held as an :class:`ImageEmbedding` record (numpy, with the sizes it
was made for and the model it came from), so callers can cache it per image, slice or tile
and hand it back with :meth:`SamPredictor.set_embedding` instead of recomputing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from . import runtime
from .modeling import Sam
from .utils.image import to_rgb_uint8
from .utils.transforms import ResizeLongestSide

# Extra launches of newly compiled single-prompt graphs (see SamPredictor.decode): launches
# 6 to 15 of a new vit_b click graph took 70-115 ms instead of ~25 ms (MindSpore 2.10, CPU).
_WARM_LAUNCHES = 14


@dataclass(frozen=True)
class ImageEmbedding:
    """An image embedding and what it belongs to.

    Attributes:
        features: (1, C, h, w) float32 output of the image encoder ((4, C, h, w) from a
            :class:`~napari_sam_ms.mirror_average.MirrorAveragedPredictor`: one per view).
        original_size: (H, W) of the image the user gave.
        input_size: (H, W) of that image resized to the model's longest side.
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamPredictor:
    """Compute an image embedding once, then predict masks for many prompts.

    Args:
        sam_model: the model used for prediction.
    """

    def __init__(self, sam_model: Sam) -> None:
        runtime.configure()
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.img_size)
        self.reset_image()

    # ----------------------------------------------------------------- image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image.

        Args:
            image: (H, W, 3) uint8 RGB as Meta's predictor takes; grayscale (H, W), RGBA and
                uint16/float images are converted first (see
                :func:`napari_sam_ms.utils.image.to_rgb_uint8`).
            image_format: ``RGB`` or ``BGR`` (channel order of a 3-channel ``image``).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = np.asarray(image)
        if image_format != self.model.image_format and image.ndim == 3 and image.shape[-1] >= 3:
            image = image[..., [2, 1, 0] + list(range(3, image.shape[-1]))]
        image = to_rgb_uint8(image)
        input_image = self.transform.apply_image(image)
        chw = np.ascontiguousarray(input_image.transpose(2, 0, 1))[None]
        self.set_torch_image(Tensor(chw), image.shape[:2])

    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]):
        """Embed an image already resized to the model's longest side: (1, 3, h, w)."""
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != self.model.img_size:
            raise ValueError(
                f"set_torch_image takes a (1, 3, h, w) image whose longest side is "
                f"{self.model.img_size}, got {shape}"
            )
        self.reset_image()
        features = self._encode(transformed_image)
        self._set_state(features, tuple(original_image_size[:2]), shape[2:])

    def _encode(self, transformed_image: Tensor) -> Tensor:
        """Normalise, pad and run the image encoder (subclasses may compile this).

        By default on CPU the encoder runs as shared compiled block graphs (same results,
        ~3x faster than op by op; see :func:`napari_sam_ms.runtime.encoder_graphs_default`),
        unless the model was compiled as a whole with :func:`runtime.compile_model`.
        """
        x = self.model.preprocess(transformed_image)
        encoder = self.model.image_encoder
        if runtime.encoder_graphs_default() and not getattr(self.model, "jit_compiled", False):
            return encoder.run_graphs(x)
        return encoder(x)

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a previously computed embedding (e.g. from a cache) instead of encoding."""
        feats = np.asarray(embedding.features, np.float32)
        c = self.model.prompt_encoder.embed_dim
        h, w = self.model.prompt_encoder.image_embedding_size
        if feats.shape != (1, c, h, w):
            raise ValueError(
                f"embedding of shape {feats.shape} does not fit this model (1, {c}, {h}, {w})"
            )
        self._set_state(Tensor(feats), embedding.original_size, embedding.input_size)

    def _set_state(self, features: Tensor, original_size, input_size) -> None:
        self.features = features
        self._rows = None
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    @property
    def embedding(self) -> ImageEmbedding:
        """The current image embedding as a numpy record (for caching)."""
        self._require_image()
        return ImageEmbedding(self.features.asnumpy(), self.original_size, self.input_size)

    def get_image_embedding(self) -> Tensor:
        """The (1, C, h, w) image embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None
        self._rows = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(image) before predicting")

    # --------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks of one object for prompts in original-image pixels.

        Args:
            point_coords: (N, 2) points as (x, y) pixels.
            point_labels: (N,) 1 = foreground, 0 = background.
            box: (4,) box x0, y0, x1, y1 (corners in any order).
            mask_input: (1, 256, 256) low-res logits from a previous prediction.
            multimask_output: return three candidate masks (best for one ambiguous click).
            return_logits: return logits instead of thresholded masks.

        Returns:
            masks (C, H, W), IoU predictions (C,), low-res logits (C, 256, 256).
        """
        self._require_image()
        coords, labels = _check_points(point_coords, point_labels, single=True)
        if box is not None:
            box = np.asarray(box, dtype=float)
            if box.size != 4:
                raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {box.shape}")
            box = box.reshape(1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, np.float32)
            if mask_input.ndim == 2:
                mask_input = mask_input[None]
            mask_input = mask_input[None]
        masks, iou, low_res = self.predict_batch(
            None if coords is None else coords[None],
            None if labels is None else labels[None],
            box,
            mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict B objects at once, prompts in original-image pixels.

        Args:
            point_coords: (B, N, 2) points per object, (x, y) pixels.
            point_labels: (B, N) labels per object.
            boxes: (B, 4) one box per object.
            mask_input: (B, 1, 256, 256) low-res logits per object.

        Returns:
            masks (B, C, H, W), IoU predictions (B, C), low-res logits (B, C, 256, 256).
        """
        self._require_image()
        coords, labels = _check_points(point_coords, point_labels, single=False)
        if coords is not None:
            _check_inside(coords.reshape(-1, 2), self.original_size)
            coords = self.transform.apply_coords(coords, self.original_size)
        if boxes is not None:
            boxes = _check_boxes(boxes, self.original_size)
            boxes = self.transform.apply_boxes(boxes, self.original_size)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, np.float32)
            want = self.model.prompt_encoder.mask_input_size
            if mask_input.ndim != 4 or mask_input.shape[1] != 1 or mask_input.shape[2:] != want:
                raise ValueError(
                    f"mask_input must have shape (B, 1, {want[0]}, {want[1]}) (low-res logits "
                    f"of an earlier prediction), got {mask_input.shape}"
                )
        sizes = {len(a) for a in (coords, boxes, mask_input) if a is not None}
        if not sizes:
            raise ValueError("no prompt given: pass points with labels, a box or a mask_input")
        if len(sizes) > 1:
            raise ValueError(
                "points, boxes and mask_input must describe the same number of objects "
                f"(got batch sizes {sorted(sizes)})"
            )
        return self.predict_transformed(
            coords, labels, boxes, mask_input, multimask_output, return_logits
        )

    def predict_torch(
        self,
        point_coords: Tensor | np.ndarray | None,
        point_labels: Tensor | np.ndarray | None,
        boxes: Tensor | np.ndarray | None = None,
        mask_input: Tensor | np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Meta's batched form: prompts already in the resized frame; returns Tensors."""
        masks, iou, low_res = self.predict_transformed(
            *(_np(a) for a in (point_coords, point_labels, boxes, mask_input)),
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return Tensor(masks), Tensor(iou), Tensor(low_res)

    def predict_transformed(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the prompt encoder and decoder on prompts in the resized frame (numpy in/out)."""
        self._require_image()
        low_res, iou = self.decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        low_res = low_res.asnumpy()
        if return_logits:
            masks = self.model.upscale_masks(low_res, self.input_size, self.original_size)
            masks = np.ascontiguousarray(masks)
        else:
            masks = self.model.binary_masks(low_res, self.input_size, self.original_size)
        return masks, iou.asnumpy(), low_res

    def decode(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Low-res mask logits (B, C, 256, 256) and IoU predictions (B, C) as Tensors.

        The prompt encoder and mask decoder run as compiled graphs when
        :func:`napari_sam_ms.runtime.decoder_graphs_default` says so (CPU default: ~3x
        faster than op by op, same results; each new prompt kind and shape compiles once,
        ~2 s). Graphs are shared by all predictors of a model. One prompt runs through the
        transformer and the upscaling in one graph (:meth:`_decode_one`); several run in
        chunks through the transformer, then the output upscaling runs prompt by prompt (see
        :meth:`decode_selected`).
        """
        prompts = _prompt_arrays(point_coords, point_labels, boxes, mask_input)
        key = _prompt_kind(prompts, multimask_output)
        if _batch_size(prompts) > 1:
            iou, _, low_res = self._decode_staged(prompts, key, None)
            return low_res, Tensor(iou)
        compiled = len(self._graphs())
        iou, low_res = self._decode_one(prompts, key)
        if len(self._graphs()) > compiled:
            # MindSpore's CPU runtime settles over a new graph's first launches (measured:
            # launches 6-15 slower by 3-4x, whatever their timing); launch the new graphs
            # past that now (~1 s), while the user waits for the compile anyway.
            for _ in range(_WARM_LAUNCHES):
                iou, low_res = self._decode_one(prompts, key)
        return low_res, iou

    def decode_selected(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        min_iou: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """IoU predictions of all prompts, and mask logits only where they may be wanted.

        The IoU head does not depend on the masks: whole-image mode drops candidates whose
        predicted IoU is too low, so their masks are never computed here. The logits that
        are computed are the same as :meth:`decode` gives.

        Args:
            min_iou: compute the masks of prompts with at least one IoU prediction above
                this; None computes all.

        Returns:
            IoU predictions (B, C), the indices (K,) of the prompts whose masks were
            computed, and their low-res logits (K, C, 256, 256).
        """
        prompts = _prompt_arrays(point_coords, point_labels, boxes, mask_input)
        return self._decode_staged(prompts, _prompt_kind(prompts, multimask_output), min_iou)

    def _decode_one(self, prompts: list, key: tuple) -> tuple[Tensor, Tensor]:
        """One prompt (arrays from :func:`_prompt_arrays`): the transformer, heads and
        upscaling in one graph. On CPU one launch instead of two and no slicing between
        them: a vit_b click ~1.5-3 ms faster than :meth:`_decode_staged`, same numbers."""
        sparse, dense = self._graph(("prompts", *key[:3]))(*_tensors(prompts))
        image, image_pe = self._image_side(dense, key[2])
        return self._graph(("click", key[3]))(image, image_pe, sparse, dense)

    def _image_side(self, dense: Tensor, has_mask: bool) -> tuple[Tensor, Tensor]:
        """The image side of the transformer as token rows. Without mask prompts all
        prompts share it (made once per image, :meth:`_image_rows`); with them, each
        batch's rows are made in an unfused graph (fused, MindSpore 2.10 got that
        broadcast sum of maps wrong on CPU)."""
        if not has_mask:
            return self._image_rows()
        return self._graph(("rows",))(self.features, dense_pe(self.model), dense)

    def _decode_staged(
        self, prompts: list, key: tuple, min_iou: float | None
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """:meth:`decode_selected` on prompt arrays from :func:`_prompt_arrays`."""
        b = _batch_size(prompts)
        chunk = 1 if b == 1 else _decode_chunk()
        prompts_fn = self._graph(("prompts", *key[:3]))
        tokens_fn = self._graph(("tokens", key[3], chunk))
        upscale_fn = self._graph(("upscale",))
        h, w = self.model.prompt_encoder.image_embedding_size
        ious, selected, lows = [], [], []
        # Chunks bound the transformer's working memory (~0.3 GB per prompt for vit_b). A
        # short last chunk is padded by repeating its last prompt, so that one compiled
        # graph serves every chunk. The upscaling runs one prompt at a time: its maps are
        # large, and on CPU one prompt's fit the caches far better than a batch's.
        for start in range(0, b, chunk):
            part = [None if a is None else a[start : start + chunk] for a in prompts]
            n = _batch_size(part)
            if n < chunk and self._compiled():
                part = [
                    None if a is None else np.concatenate([a, np.repeat(a[-1:], chunk - n, 0)])
                    for a in part
                ]
            sparse, dense = prompts_fn(*_tensors(part))
            image, image_pe = self._image_side(dense, key[2])
            iou, src, hyper_in = tokens_fn(image, image_pe, sparse, dense)
            iou = iou.asnumpy()[:n]
            ious.append(iou)
            wanted = np.arange(n) if min_iou is None else np.flatnonzero((iou > min_iou).any(1))
            for i in wanted.tolist():
                lows.append(upscale_fn(src[i : i + 1], hyper_in[i : i + 1], h, w))
            selected.append(wanted + start)
        if lows:
            low_res = ops.concat(lows, 0)
        else:
            low_res = Tensor(np.zeros((0, ious[0].shape[1], 4 * h, 4 * w), np.float32))
        return np.concatenate(ious), np.concatenate(selected), low_res

    def _image_rows(self) -> tuple[Tensor, Tensor]:
        """The image side of the transformer for prompts without masks
        (``MaskDecoder.image_rows``), made at the first such prompt of an image and kept
        while the image, the no-mask embedding and the positional encoding stay the same."""
        model = self.model
        no_mask = model.prompt_encoder.no_mask_embed.weight
        pe = dense_pe(model)
        values = no_mask.asnumpy()
        cached = self._rows
        if (
            cached is None
            or cached[0] is not self.features
            or cached[1] is not pe
            or not np.array_equal(cached[2], values)
        ):
            rows = self._graph(("rows",))(self.features, pe, no_mask.reshape(1, -1, 1, 1))
            cached = self._rows = (self.features, pe, values, rows)
        return cached[3]

    def _fused(self) -> bool:
        """Whether the mask decoder's graphs compile with graph kernel fusion (CPU, vit_b:
        the upscaling's GELUs and layer norm fused, ~6 instead of ~18 ms per prompt; the
        transformer ~16 instead of ~19 ms, same numbers). The prompt encoder's graph stays
        unfused: with fusion, MindSpore 2.10 computes it wrongly on CPU."""
        return self._compiled() and runtime.fusion_available()

    def _compiled(self) -> bool:
        return runtime.decoder_graphs_default() and not getattr(self.model, "jit_compiled", False)

    def _graph(self, key: tuple):
        """The decoder function of ``key`` (see :func:`decoder_part`), compiled when
        :meth:`_compiled`; compiled graphs are shared by all predictors of the model."""
        fn = decoder_part(self.model, key)
        if not self._compiled():
            return fn
        graphs = self._graphs()
        if key not in graphs:
            fused = key[0] in ("tokens", "upscale", "click") and self._fused()
            graphs[key] = runtime.FusedGraph(fn) if fused else ms.jit(fn)
        return graphs[key]

    def _graphs(self) -> dict:
        """The model's compiled decoder graphs by key (shared by its predictors)."""
        graphs = self.model.__dict__.get("_decode_graphs")
        if graphs is None:
            graphs = {}
            # Not a sub-cell and not in checkpoints: a plain attribute of the model object.
            object.__setattr__(self.model, "_decode_graphs", graphs)
        return graphs

    @property
    def device(self) -> str:
        """The MindSpore device the model runs on."""
        return runtime.device()


def _tensors(prompts: list) -> list[Tensor]:
    """Prompt arrays as Tensors, absent ones as a placeholder (ignored by the decoder)."""
    return [Tensor(np.zeros(1, np.float32)) if a is None else Tensor(a) for a in prompts]


def _decode_chunk() -> int:
    """Prompts run through the transformer at once: ``NAPARI_SAM_MS_DECODE_CHUNK`` (default
    4). Memory vs speed, see :meth:`SamPredictor.decode_selected`."""
    return max(1, int(os.environ.get("NAPARI_SAM_MS_DECODE_CHUNK", "4")))


def _prompt_arrays(point_coords, point_labels, boxes, mask_input) -> list:
    """Prompts as float32/int32 arrays (absent ones None); at least one must be given."""
    prompts = [
        None if point_coords is None else np.asarray(point_coords, np.float32),
        None if point_coords is None else np.asarray(point_labels, np.int32),
        None if boxes is None else np.asarray(boxes, np.float32),
        None if mask_input is None else np.asarray(mask_input, np.float32),
    ]
    if all(a is None for a in prompts):
        raise ValueError("no prompt given: pass points with labels, a box or a mask_input")
    return prompts


def _batch_size(prompts: list) -> int:
    return len(next(a for a in prompts if a is not None))


def dense_pe(model: Sam) -> Tensor:
    """The prompt encoder's ``get_dense_pe()``, made once per model and kept while its
    random Fourier matrix is unchanged (it depends on nothing else, not on the image or
    the prompts): ~8 ms of a vit_b click on CPU when made for every call."""
    matrix = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.asnumpy()
    cached = model.__dict__.get("_dense_pe")
    if cached is None or not np.array_equal(cached[0], matrix):
        cached = (matrix.copy(), model.prompt_encoder.get_dense_pe())
        # Not a sub-cell and not in checkpoints: a plain attribute of the model object.
        object.__setattr__(model, "_dense_pe", cached)
    return cached[1]


def _prompt_kind(prompts: list, multimask_output: bool) -> tuple[bool, bool, bool, bool]:
    """(has points, has box, has mask, multimask): one decoder graph per kind."""
    has = [a is not None for a in prompts]
    return has[0], has[2], has[3], bool(multimask_output)


def decoder_part(model: Sam, key: tuple):
    """A decoder function for :meth:`SamPredictor._graph`: ``("prompts", has_points,
    has_box, has_mask)`` is :func:`prompt_fn`; ``("tokens", multimask, chunk)`` the mask
    decoder up to the output upscaling (``MaskDecoder.predict_tokens``) for chunks of
    ``chunk`` prompts; ``("upscale",)`` the upscaling and hypernetwork product
    (``MaskDecoder.upscale_masks``); ``("click", multimask)`` both for one prompt;
    ``("rows",)`` ``MaskDecoder.image_rows``."""
    if key[0] == "prompts":
        return prompt_fn(model, *key[1:])
    if key[0] == "click":
        outputs = "multimask" if key[1] else "single"
        h, w = model.prompt_encoder.image_embedding_size

        def click(image, image_pe, sparse, dense):
            decoder = model.mask_decoder
            iou, src, hyper_in = decoder.predict_tokens(image, image_pe, sparse, dense, outputs)
            return iou, decoder.upscale_masks(src, hyper_in, h, w)

        return click
    if key[0] == "tokens":
        outputs = "multimask" if key[1] else "single"

        def tokens(image, image_pe, sparse, dense):
            return model.mask_decoder.predict_tokens(image, image_pe, sparse, dense, outputs)

        return tokens
    if key[0] == "rows":

        def rows(features, pe, dense):
            return model.mask_decoder.image_rows(features, pe, dense)

        return rows

    def upscale(src, hyper_in, h, w):
        return model.mask_decoder.upscale_masks(src, hyper_in, h, w)

    return upscale


def prompt_fn(model: Sam, has_points: bool, has_box: bool, has_mask: bool):
    """The prompt encoder for one prompt kind, as a function of Tensors (absent prompts are
    ignored placeholders) returning the sparse and dense embeddings. Without mask prompts
    the dense embedding is the no-mask vector (1, C, 1, 1): one vector for every prompt
    and pixel, added by broadcasting, so the decoder handles the image side once for the
    whole batch (see MaskDecoder.predict_tokens) and no (B, C, h, w) copy is made."""

    def prompts(coords, labels, boxes, mask_input):
        sparse, dense = model.prompt_encoder(
            (coords, labels) if has_points else None,
            boxes if has_box else None,
            mask_input if has_mask else None,
        )
        if not has_mask:
            dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return sparse, dense

    return prompts


def decode_fn(model: Sam, has_points: bool, has_box: bool, has_mask: bool, multimask: bool):
    """Prompt encoder (:func:`prompt_fn`) + mask decoder for one prompt kind, as one
    function of Tensors that the trainer differentiates and compiles with ``ms.jit``.
    ``features`` has batch 1 or B; ``image_pe`` is the prompt encoder's
    ``get_dense_pe()``, made here when not given."""
    encode_prompts = prompt_fn(model, has_points, has_box, has_mask)

    def decode(features, coords, labels, boxes, mask_input, image_pe=None):
        sparse, dense = encode_prompts(coords, labels, boxes, mask_input)
        if image_pe is None:
            image_pe = model.prompt_encoder.get_dense_pe()
        return model.mask_decoder(features, image_pe, sparse, dense, multimask)

    return decode


def _np(a):
    return a.asnumpy() if isinstance(a, Tensor) else a


def _check_points(coords, labels, single: bool):
    """Validate points and labels; return float64 coords and int labels (or Nones)."""
    if coords is None and labels is None:
        return None, None
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels)
    want = 2 if single else 3
    if coords.ndim != want or coords.shape[-1] != 2:
        form = "(N, 2)" if single else "(B, N, 2)"
        raise ValueError(f"point_coords must have shape {form} of (x, y), got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels shape {labels.shape} does not match point_coords {coords.shape}: "
            "give one label per point"
        )
    if coords.shape[-2] == 0:
        raise ValueError("point_coords is empty: pass None instead of an empty array")
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contains NaN or infinite values")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
    return coords, labels.astype(np.int32)


def _check_inside(coords: np.ndarray, original_size: tuple[int, int]) -> None:
    h, w = original_size
    outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
    if outside.any():
        x, y = coords[np.argmax(outside)]
        raise ValueError(
            f"point ({x:g}, {y:g}) lies outside the {w}x{h} image; points are (x, y) pixels"
        )


def _check_boxes(boxes, original_size: tuple[int, int]) -> np.ndarray:
    """(B, 4) boxes with corners ordered (x0 <= x1, y0 <= y1) and clipped to the image."""
    boxes = np.asarray(boxes, dtype=float)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) of x0, y0, x1, y1, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite values")
    h, w = original_size
    x = np.clip(np.sort(boxes[:, [0, 2]], axis=1), 0, w)
    y = np.clip(np.sort(boxes[:, [1, 3]], axis=1), 0, h)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


__all__ = ["ImageEmbedding", "SamPredictor"]
