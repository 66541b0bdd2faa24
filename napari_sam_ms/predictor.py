"""Interactive prediction: embed an image once, then predict masks for prompts
(mirrors ``segment_anything/predictor.py``).

The image embedding is held as an :class:`ImageEmbedding` record (numpy, with the sizes it
was made for and the model it came from), so callers can cache it per image, slice or tile
and hand it back with :meth:`SamPredictor.set_embedding` instead of recomputing. Compiled
execution is the model's :class:`~napari_sam_ms.engine.Engine`'s; prompt checks are in
:mod:`napari_sam_ms.prompt_checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor

from . import prompt_checks, runtime
from . import settings as _settings
from .engine import Engine, Runner
from .modeling import Sam
from .modeling.sam import split_embedding
from .settings import Settings
from .utils.masks import binary_masks, upscale_masks
from .utils.transforms import ResizeLongestSide


@dataclass(frozen=True)
class ImageEmbedding:
    """An image embedding and what it belongs to.

    Attributes:
        features: (1, C, h, w) float32 output of the image encoder ((4, C, h, w) from a
            :class:`~napari_sam_ms.mirror_average.MirrorAveragedPredictor`: one per view).
        original_size: (H, W) of the image the user gave.
        input_size: (H, W) of that image resized to the model's longest side.
        early: (1, C0, h, w) early encoder features of a model with HQ-SAM-style fusion
            (``mask_decoder.hq_fusion``), else None.
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    early: np.ndarray | None = None


class SamPredictor:
    """Compute an image embedding once, then predict masks for many prompts.

    Args:
        sam_model: the model used for prediction.
        settings: compiled graphs or op by op, chunk sizes (default: ``settings.current()``).
        engine: the model's compiled graphs (default: the one its predictors share).
    """

    def __init__(
        self, sam_model: Sam, settings: Settings | None = None, engine: Engine | None = None
    ) -> None:
        runtime.configure()
        self.model = sam_model
        self.settings = settings or _settings.current()
        self.engine = engine or Engine.for_model(sam_model)
        self.runner = Runner(sam_model, self.engine, self.settings)
        self.transform = ResizeLongestSide(sam_model.img_size)
        self.reset_image()

    @property
    def embedding_suffix(self) -> str:
        """What cache ids of this predictor's embeddings append to the model's id ("")."""
        return ""

    # ----------------------------------------------------------------- image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image.

        Args:
            image: (H, W, 3) uint8 RGB as Meta's predictor takes; grayscale (H, W), RGBA and
                uint16/float images are converted first (see
                :func:`napari_sam_ms.utils.image.to_rgb_uint8`).
            image_format: ``RGB`` or ``BGR`` (channel order of a 3-channel ``image``).
        """
        transformed, original_size = prompt_checks.model_image(
            image, image_format, self.model.image_format, self.transform
        )
        self.set_torch_image(transformed, original_size)

    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]):
        """Embed an image already resized to the model's longest side: (1, 3, h, w)."""
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != self.model.img_size:
            raise ValueError(
                f"set_torch_image takes a (1, 3, h, w) image whose longest side is "
                f"{self.model.img_size}, got {shape}"
            )
        self.reset_image()
        features, early = split_embedding(self._encode(transformed_image))
        self._set_state(features, tuple(original_image_size[:2]), shape[2:], early)

    def _encode(self, transformed_image: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Normalise, pad and run the image encoder (compiled where the settings say); with
        HQ-SAM-style fusion (embedding, early features)."""
        return self.runner.encode(self.model.preprocess(transformed_image))

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a previously computed embedding (e.g. from a cache) instead of encoding."""
        feats = np.asarray(embedding.features, np.float32)
        c = self.model.prompt_encoder.embed_dim
        h, w = self.model.prompt_encoder.image_embedding_size
        if feats.shape != (1, c, h, w):
            raise ValueError(
                f"embedding of shape {feats.shape} does not fit this model (1, {c}, {h}, {w})"
            )
        early = None
        if self.model.mask_decoder.hq_fusion:
            if embedding.early is None:
                raise ValueError("this model fuses early encoder features: the embedding has none")
            early = Tensor(np.asarray(embedding.early, np.float32))
        self._set_state(Tensor(feats), embedding.original_size, embedding.input_size, early)

    def _set_state(self, features: Tensor, original_size, input_size, early=None) -> None:
        self.features = features
        self.early_features = early
        self.runner.forget_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    @property
    def embedding(self) -> ImageEmbedding:
        """The current image embedding as a numpy record (for caching)."""
        self._require_image()
        early = None if self.early_features is None else self.early_features.asnumpy()
        return ImageEmbedding(self.features.asnumpy(), self.original_size, self.input_size, early)

    def get_image_embedding(self) -> Tensor:
        """The (1, C, h, w) image embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features = None
        self.early_features = None
        self.original_size = None
        self.input_size = None
        self.runner.forget_image()

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
        masks, iou, low_res = self.predict_batch(
            *prompt_checks.one_object(point_coords, point_labels, box, mask_input),
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
        prompts = prompt_checks.model_frame(
            point_coords,
            point_labels,
            boxes,
            mask_input,
            self.transform,
            self.original_size,
            self.model.prompt_encoder.mask_input_size,
        )
        return self.predict_transformed(*prompts, multimask_output, return_logits)

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
        sizes = (self.model.img_size, self.input_size, self.original_size)
        if return_logits:
            masks = np.ascontiguousarray(upscale_masks(low_res, *sizes))
        else:
            masks = binary_masks(low_res, *sizes, self.model.mask_threshold)
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

        The prompt encoder and mask decoder run as the engine's compiled graphs when the
        settings say so (each new prompt kind and shape compiles once per model).
        """
        prompts = prompt_checks.prompt_arrays(point_coords, point_labels, boxes, mask_input)
        return self.runner.decode(self.features, prompts, multimask_output, self.early_features)

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
        prompts = prompt_checks.prompt_arrays(point_coords, point_labels, boxes, mask_input)
        return self.runner.decode_selected(
            self.features, prompts, multimask_output, min_iou, self.early_features
        )

    def warm_up(
        self,
        multimask: tuple[bool, ...] = (True,),
        masks: tuple[bool, ...] = (False,),
        objects: tuple[int, ...] = (1,),
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Compile ahead the decoder graphs that clicks need (every point count up to the
        largest bucket, with and without a box, a box alone), so that no click compiles.

        Args:
            multimask: output kinds (the widgets ask for three masks: True).
            masks: without (False) and/or with (True) a previous mask as prompt.
            objects: 1 and/or more objects per call (chunks of ``Settings.decode_chunk``).
            stop: asked before each graph; True ends the warm-up early.

        Returns:
            The number of graphs compiled (0 when the decoder runs op by op).
        """
        return self.runner.warm_up(multimask, masks, objects, stop=stop)

    @property
    def device(self) -> str:
        """The MindSpore device the model runs on."""
        return runtime.device()


def _np(a):
    return a.asnumpy() if isinstance(a, Tensor) else a


__all__ = ["ImageEmbedding", "SamPredictor"]
