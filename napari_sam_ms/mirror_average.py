"""Predictions averaged over the image and its mirror images (ours, not Meta's).

:class:`MirrorAveragedPredictor` wraps four plain :class:`~napari_sam_ms.predictor.SamPredictor`
views sharing one engine: the image as it is and flipped left-right, up-down and both. Every
prompt runs on all four with the prompt mirrored alike; the mask logits are mirrored back
and averaged (and the predicted IoUs) before thresholding. It costs four image embeddings
and four decoder runs per prompt. The embedded ``micro`` model uses it (its registry entry's
``mirror_average``); official models keep Meta's single prediction. Whole-image mode
averages likewise with ``SamAutomaticMaskGenerator(..., mirror_average=True)``
(:meth:`MirrorAveragedPredictor.decode_selected`). ``docs/training.md`` has the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mindspore import Tensor

from . import prompt_checks, runtime
from . import settings as _settings
from .engine import Engine
from .modeling import Sam
from .predictor import ImageEmbedding, SamPredictor
from .settings import Settings
from .utils.masks import resize_to_original, upscale_to_input
from .utils.transforms import ResizeLongestSide

# (flip rows, flip columns) of each view; the first is the image itself.
VIEWS: tuple[tuple[bool, bool], ...] = ((False, False), (False, True), (True, False), (True, True))


def _as_numpy(a):
    return a.asnumpy() if isinstance(a, Tensor) else a


def _flip_image(a: np.ndarray, view: tuple[bool, bool]) -> np.ndarray:
    """Flip the last two axes of ``a`` as ``view`` says (its own inverse)."""
    if view[0]:
        a = a[..., ::-1, :]
    if view[1]:
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def _flip_valid(
    a: np.ndarray, view: tuple[bool, bool], valid: tuple[int, int], copy: bool = True
) -> np.ndarray:
    """Flip only the top-left ``valid`` (rows, columns) of the last two axes: the part of a
    padded model-frame array (low-res logits) that covers the image (``copy=False``: in
    place when ``a`` is a float32 array)."""
    out = np.array(a, np.float32) if copy else np.asarray(a, np.float32)
    vh, vw = valid
    if view[0]:
        out[..., :vh, :] = out[..., :vh, :][..., ::-1, :]
    if view[1]:
        out[..., :, :vw] = out[..., :, :vw][..., ::-1]
    return out


def _flip_points(xy: np.ndarray, view: tuple[bool, bool], size: tuple[int, int]) -> np.ndarray:
    """Mirror (x, y) prompt coordinates of the resized frame (``size`` = (h, w)).

    SAM reads a coordinate c as the pixel whose centre is at c + 0.5, so the mirror of c in
    a side of n pixels is n - 1 - c (pixel i <-> pixel n - 1 - i).
    """
    out = np.array(xy, np.float64, copy=True)
    if view[1]:
        out[..., 0] = size[1] - 1 - out[..., 0]
    if view[0]:
        out[..., 1] = size[0] - 1 - out[..., 1]
    return out


def _flip_boxes(boxes: np.ndarray, view: tuple[bool, bool], size: tuple[int, int]) -> np.ndarray:
    """Mirror (x0, y0, x1, y1) boxes of the resized frame; corners stay ordered."""
    corners = _flip_points(np.asarray(boxes, np.float64).reshape(-1, 2, 2), view, size)
    return np.concatenate([corners.min(1), corners.max(1)], axis=1)


class MirrorAveragedPredictor:
    """A predictor whose prompt predictions are the mean over four mirror views.

    Same methods and results layout as :class:`SamPredictor`. Its :attr:`embedding` holds the
    four views' features stacked, shape (4, C, h, w), and :meth:`set_embedding` takes such
    a record back (a plain predictor refuses it, and this one refuses a plain embedding).

    Args:
        sam_model: the model used for prediction.
        settings: as for :class:`SamPredictor` (default: ``settings.current()``).
        engine: the model's compiled graphs, shared by the four views.
    """

    def __init__(
        self, sam_model: Sam, settings: Settings | None = None, engine: Engine | None = None
    ) -> None:
        self.model = sam_model
        self.settings = settings or _settings.current()
        self.engine = engine or Engine.for_model(sam_model)
        self.transform = ResizeLongestSide(sam_model.img_size)
        self.views = [SamPredictor(sam_model, self.settings, self.engine) for _ in VIEWS]

    @property
    def embedding_suffix(self) -> str:
        """What cache ids of this predictor's embeddings append to the model's id."""
        return f"+mirror{len(VIEWS)}"

    # -------------------------------------------------------- the first view's state
    @property
    def is_image_set(self) -> bool:
        return self.views[0].is_image_set

    @property
    def original_size(self) -> tuple[int, int] | None:
        return self.views[0].original_size

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.views[0].input_size

    @property
    def features(self) -> Tensor | None:
        """The unflipped view's (1, C, h, w) image embedding."""
        return self.views[0].features

    @property
    def device(self) -> str:
        """The MindSpore device the model runs on."""
        return runtime.device()

    def warm_up(
        self,
        multimask: tuple[bool, ...] = (True,),
        masks: tuple[bool, ...] = (False,),
        objects: tuple[int, ...] = (1,),
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """As :meth:`SamPredictor.warm_up` (the four views share the graphs)."""
        return self.views[0].warm_up(multimask, masks, objects, stop)

    # ----------------------------------------------------------------- image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image and its three mirror images (arguments as
        :meth:`SamPredictor.set_image`)."""
        transformed, original_size = prompt_checks.model_image(
            image, image_format, self.model.image_format, self.transform
        )
        self.set_torch_image(transformed, original_size)

    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]):
        """Embed the resized image (1, 3, h, w) and its three mirror images."""
        image = transformed_image.asnumpy()
        self.views[0].set_torch_image(transformed_image, original_image_size)
        for view, predictor in zip(VIEWS[1:], self.views[1:], strict=True):
            predictor.set_torch_image(Tensor(_flip_image(image, view)), original_image_size)

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use an embedding of this predictor kind (four views) instead of encoding."""
        feats = np.asarray(embedding.features, np.float32)
        if feats.ndim != 4 or feats.shape[0] != len(VIEWS):
            raise ValueError(
                f"a mirror-averaged predictor needs the features of {len(VIEWS)} views, shape "
                f"({len(VIEWS)}, C, h, w); got {feats.shape} (an embedding of a plain "
                "predictor: embed the image again with set_image)"
            )
        for f, predictor in zip(feats, self.views, strict=True):
            predictor.set_embedding(
                ImageEmbedding(f[None], embedding.original_size, embedding.input_size)
            )

    @property
    def embedding(self) -> ImageEmbedding:
        """The four views' features stacked (4, C, h, w), for caching."""
        first = self.views[0].embedding
        feats = [first.features] + [p.embedding.features for p in self.views[1:]]
        return ImageEmbedding(np.concatenate(feats), first.original_size, first.input_size)

    def get_image_embedding(self) -> Tensor:
        """The unflipped view's (1, C, h, w) image embedding."""
        return self.views[0].get_image_embedding()

    def reset_image(self) -> None:
        """Forget the current image (in every view)."""
        for predictor in self.views:
            predictor.reset_image()

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
        """As :meth:`SamPredictor.predict`, averaged over the four views."""
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
        """As :meth:`SamPredictor.predict_batch`, averaged over the four views."""
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
        """As :meth:`SamPredictor.predict_torch`, averaged over the four views."""
        masks, iou, low_res = self.predict_transformed(
            *(_as_numpy(a) for a in (point_coords, point_labels, boxes, mask_input)),
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
        """As :meth:`SamPredictor.predict_transformed`, averaged over the four views.

        Mask logits are averaged in the model-input frame (each view upscaled to it and
        mirrored back exactly), then resized to the original size once: the same numbers as
        averaging at full resolution (the resize is linear and mirror-symmetric). The
        returned low-res logits are averaged in the low-res frame, where a view's image part
        is mirrored back (rounded to whole low-res pixels when the image does not fill a
        whole number of them).
        """
        self._require_image()
        valid = self._valid()
        img_size = self.model.img_size
        logits, ious, lows = 0.0, 0.0, 0.0
        for view, predictor, prompts in self._views(point_coords, boxes, mask_input):
            low_res, iou = predictor.decode(
                prompts[0], point_labels, *prompts[1:], multimask_output
            )
            low_res = low_res.asnumpy()
            up = upscale_to_input(low_res, img_size, self.input_size)
            logits = logits + _flip_image(up, view)
            ious = ious + iou.asnumpy()
            lows = lows + _flip_valid(low_res, view, valid)
        n = len(VIEWS)
        logits = resize_to_original(logits / n, self.original_size)
        masks = logits if return_logits else logits > self.model.mask_threshold
        return masks, (ious / n).astype(np.float32), (lows / n).astype(np.float32)

    def decode(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """The unflipped view's :meth:`SamPredictor.decode` (not averaged)."""
        return self.views[0].decode(point_coords, point_labels, boxes, mask_input, multimask_output)

    def decode_selected(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        min_iou: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """As :meth:`SamPredictor.decode_selected` (whole-image mode), averaged over the
        four views: the mean IoU predictions choose the prompts, whose low-res logits are
        then averaged in the model frame (see :meth:`predict_transformed`)."""
        self._require_image()
        valid = self._valid()
        ious, lows = 0.0, 0.0
        for view, predictor, prompts in self._views(point_coords, boxes, mask_input):
            # All prompts of every view: the mean IoU decides which are wanted.
            iou, _, low = predictor.decode_selected(
                prompts[0], point_labels, *prompts[1:], multimask_output, None
            )
            ious = ious + iou
            lows = lows + _flip_valid(low.asnumpy(), view, valid, copy=False)
        n = len(VIEWS)
        ious = (ious / n).astype(np.float32)
        wanted = (
            np.arange(len(ious)) if min_iou is None else np.flatnonzero((ious > min_iou).any(1))
        )
        return ious, wanted, Tensor((lows[wanted] / n).astype(np.float32))

    def _views(self, point_coords, boxes, mask_input):
        """(view, its predictor, (points, boxes, mask_input) mirrored for it) per view."""
        size, valid = self.input_size, self._valid()
        for view, predictor in zip(VIEWS, self.views, strict=True):
            yield (
                view,
                predictor,
                (
                    None if point_coords is None else _flip_points(point_coords, view, size),
                    None if boxes is None else _flip_boxes(boxes, view, size),
                    None if mask_input is None else _flip_valid(mask_input, view, valid),
                ),
            )

    def _valid(self) -> tuple[int, int]:
        """Rows and columns of the low-res model frame that cover the image."""
        low = self.model.prompt_encoder.mask_input_size
        scale = low[0] / self.model.img_size
        h, w = self.input_size
        return min(low[0], int(np.ceil(h * scale))), min(low[1], int(np.ceil(w * scale)))


__all__ = ["VIEWS", "MirrorAveragedPredictor"]
