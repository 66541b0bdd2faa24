"""The two prompt layers of the prompt widget and how they become SAM prompts.

"SAM points" is a Points layer with a categorical feature ``label`` (1 foreground, drawn
green; 0 background, drawn red); "SAM boxes" is a Shapes layer whose rectangles are boxes.
Both share the image's dimensionality, scale and translate when created; prompts are mapped
through world coordinates anyway, so moving either layer keeps working.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Points, Shapes

from napari_sam_ms.bridge import (
    Frame,
    ObjectPrompt,
    clip_box,
    group_prompts,
    inside,
    points_to_sam,
    rectangles_to_sam,
)

from .image_target import ImageTarget, level_shapes

FG, BG = 1, 0
POINT_COLORS = {FG: "lime", BG: "red"}


class PromptLayers:
    """Creates, watches, reads and clears the prompt layers of one viewer.

    Args:
        viewer: the napari viewer.
        on_change: called on every edit of either layer.
        keys: key -> callback, bound on both layers (``toggle`` only on the points).
    """

    def __init__(
        self,
        viewer: Any,
        on_change: Callable[..., None],
        keys: dict[str, Callable[[], None]],
        toggle_key: tuple[str, Callable[[], None]],
    ) -> None:
        self._viewer = viewer
        self._on_change = on_change
        self._keys = keys
        self._toggle_key = toggle_key
        self.points: Points | None = None
        self.boxes: Shapes | None = None
        self.default_label = FG

    def forget_removed(self) -> None:
        """Drop references to layers the user deleted."""
        for attr in ("points", "boxes"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self._viewer.layers:
                layer.events.data.disconnect(self._on_change)
                setattr(self, attr, None)

    def ensure(self, image: Any) -> None:
        """Create the layers for ``image`` (again if its dimensionality differs)."""
        for layer in (self.points, self.boxes):
            if layer is not None and layer.ndim != image.ndim:
                self._viewer.layers.remove(layer)
        self.forget_removed()
        size = max(4.0, max(level_shapes(image)[0][-2:]) / 40)
        common = dict(scale=image.scale, translate=image.translate, ndim=image.ndim)
        if self.boxes is None:
            self.boxes = Shapes(
                name="SAM boxes",
                edge_color="yellow",
                face_color="transparent",
                edge_width=max(1.0, size / 4),
                **common,
            )
            self.boxes.mode = "add_rectangle"
            self._wire(self.boxes)
            self._viewer.add_layer(self.boxes)
        if self.points is None:
            with warnings.catch_warnings():  # "label looks categorical": it is, on purpose
                warnings.filterwarnings("ignore", "Feature 'label' looks like categorical")
                self.points = self._new_points(size, common)
            self._wire(self.points)
            key, callback = self._toggle_key
            self.points.bind_key(key, lambda _layer: callback(), overwrite=True)
            self._viewer.add_layer(self.points)
            self.points.mode = "add"
        self._viewer.layers.selection.active = self.points

    def _new_points(self, size: float, common: dict) -> Points:
        features = pd.DataFrame({"label": pd.Series([], dtype=pd.CategoricalDtype([BG, FG]))})
        return Points(
            name="SAM points",
            features=features,
            feature_defaults={"label": self.default_label},
            face_color="label",
            face_color_cycle=POINT_COLORS,
            border_color="white",
            size=size,
            **common,
        )

    def _wire(self, layer: Any) -> None:
        layer.events.data.connect(self._on_change)
        for key, callback in self._keys.items():
            layer.bind_key(key, lambda _layer, cb=callback: cb(), overwrite=True)

    def set_default_label(self, value: int) -> None:
        """Label given to the next points added (existing points keep theirs)."""
        self.default_label = int(value)
        if self.points is not None:
            self.points.feature_defaults = {"label": self.default_label}

    def has_prompts(self) -> bool:
        return bool(
            (self.points is not None and len(self.points.data))
            or (self.boxes is not None and len(self.boxes.data))
        )

    def collect(self, target: ImageTarget) -> tuple[list[ObjectPrompt], list[str]]:
        """Objects on the shown slice in SAM pixels, and warnings about ignored prompts."""
        plane = target.plane_shape
        notes: list[str] = []
        xy, labels = np.zeros((0, 2)), np.zeros(0, np.int32)
        pts = self.points
        if pts is not None and len(pts.data):
            raw = np.asarray(pts.features["label"]).astype(np.int32)
            src = Frame.of(pts.scale, pts.translate)
            xy, labels, _ = points_to_sam(pts.data, raw, src, target.frame, target.slice_index)
        outside = ~inside(xy, plane)
        if outside.any():
            notes.append(f"{int(outside.sum())} point(s) outside the image were ignored")
            xy, labels = xy[~outside], labels[~outside]
        boxes = np.zeros((0, 4))
        shp = self.boxes
        if shp is not None and len(shp.data):
            kinds = zip(shp.data, shp.shape_type, strict=True)
            rects = [d for d, kind in kinds if kind == "rectangle"]
            if len(rects) < len(shp.data):
                notes.append("only rectangles are used as boxes; other shapes were ignored")
            src = Frame.of(shp.scale, shp.translate)
            found, _ = rectangles_to_sam(rects, src, target.frame, target.slice_index)
            clipped = [clip_box(b, plane) for b in found]
            if any(b is None for b in clipped):
                notes.append("box(es) outside the image were ignored")
            boxes = np.array([b for b in clipped if b is not None]).reshape(-1, 4)
        return group_prompts(xy, labels, boxes), notes

    def clear(self) -> None:
        """Remove every point and box (without triggering a new prediction)."""
        for layer in (self.points, self.boxes):
            if layer is None:
                continue
            with layer.events.data.blocker():
                if isinstance(layer, Points):
                    layer.data = np.empty((0, layer.ndim))
                else:
                    layer.data = []

    def disconnect(self) -> None:
        for layer in (self.points, self.boxes):
            if layer is not None:
                layer.events.data.disconnect(self._on_change)


__all__ = ["BG", "FG", "POINT_COLORS", "PromptLayers"]
