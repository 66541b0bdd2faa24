"""Propagation on slices larger than the model's input: each slice answered through tiles.

:class:`TiledSlices` gives :mod:`napari_sam_ms.propagate` the predictor calls it makes
(``predict`` with full-slice masks back) from a :class:`~napari_sam_ms.tiled.TiledPredictor`:
the next slice's box (or points) is answered from the one tile that covers it, at the
slice's own resolution, and only that tile is embedded (cached per tile and slice). Masks are
pasted into full-slice arrays. The previous slice's low-res logits belong to another tile's
frame, so prompt kinds with ``mask`` are refused (:func:`check_tiled_kind`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tiled import TiledPredictor
from .utils.tiling import plane_tiling
from .volumes.slice_prompts import check_kind

AUTO = "auto"


def use_tiles(tile_shape: Any, zoom: int, slice_shape: tuple[int, int], predictor: Any) -> bool:
    """Whether slices go through tiles, by :func:`~napari_sam_ms.utils.tiling.plane_tiling`'s
    rule (``"auto"``: slices larger than about 1.5 times ``predictor``'s model input, or a
    zoom above 1). A predictor without a SAM model (a stand-in) never tiles."""
    model_input = getattr(getattr(predictor, "model", None), "img_size", None)
    if tile_shape is None or model_input is None:
        return False
    return bool(plane_tiling(tile_shape, None, zoom, slice_shape, int(model_input)))


def check_tiled_kind(kind: str) -> None:
    """Refuse a prompt kind that passes the previous slice's logits on (not with tiles)."""
    if "mask" in check_kind(kind):
        raise ValueError(
            f"prompt {kind!r} passes the previous slice's mask logits on, which belong to "
            "another tile on slices this large: choose box, points or box+points"
        )


class TiledSlices:
    """The predictor propagation uses, answering from tiles of the slice set last.

    Args:
        tiled: the tiled predictor (its cache and model id decide where tiles are kept).
    """

    def __init__(self, tiled: TiledPredictor) -> None:
        self.tiled = tiled
        self.notes: list[str] = []  # one line per slice answered from a coarser window

    @property
    def engine(self) -> Any:
        return getattr(self.tiled.predictor, "engine", None)

    @property
    def model(self) -> Any:
        return self.tiled.predictor.model

    def set_slice(self, rgb: np.ndarray) -> None:
        """Answer from this slice (8-bit RGB, the stack's contrast); nothing is embedded."""
        self.tiled.set_image(rgb)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``SamPredictor.predict``: (C, H, W) masks of the whole slice, scores, and the
        answering tile's low-res logits (not usable as another tile's ``mask_input``)."""
        if mask_input is not None:
            raise ValueError("mask_input cannot be passed on through tiles")
        got = self.tiled.predict(point_coords, point_labels, box, multimask_output)
        if got.note:
            self.notes.append(got.note)
        assert self.tiled.source is not None  # set by set_slice
        masks = np.zeros((len(got.scores), *self.tiled.source.shape), bool)
        y0, x0, y1, x1 = got.box
        masks[:, y0:y1, x0:x1] = got.masks
        return masks, np.asarray(got.scores), np.asarray(got.low_res_logits)


__all__ = ["AUTO", "TiledSlices", "check_tiled_kind", "use_tiles"]
