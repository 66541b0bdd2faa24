"""The prompt layers of the prompt widget and how they become SAM prompts.

The widget creates its own "SAM points" (a Points layer with a categorical feature ``label``:
1 foreground, drawn green; 0 background, drawn red) and "SAM boxes" (a Shapes layer whose
rectangles are boxes), but any Points or Shapes layer can be used instead. A Points layer
without a ``label`` feature is all foreground. Prompts are mapped through world coordinates,
so layers with their own scale or translate work.
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
    as_point_labels,
    clip_box,
    group_per_point,
    group_prompts,
    inside,
    points_to_sam,
    rectangles_to_sam,
)

from .common import camera
from .image_target import ImageTarget, level_shapes

FG, BG = 1, 0
POINT_COLORS = {FG: "lime", BG: "red"}
POINTS_NAME, BOXES_NAME = "SAM points", "SAM boxes"
MARKER_PX = 10  # point markers are this many screen pixels wide at every zoom


class PromptLayers:
    """Creates, watches, reads and clears the prompt layers of one viewer.

    Args:
        viewer: the napari viewer.
        on_change: called on every edit of the prompt layers in use.
        keys: key -> callback, bound on both layers in use.
        toggle_key: (key, callback) bound on the points layer only.
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
        self.points: Points | None = None  # the layers in use
        self.boxes: Shapes | None = None
        self.own_points: Points | None = None  # the layers this object made
        self.own_boxes: Shapes | None = None
        self.default_label = FG
        self._unbound: dict[int, dict[str, Any]] = {}  # layer id -> key -> replaced binding

    # ------------------------------------------------------------------ which layers
    def forget_removed(self) -> list[str]:
        """Let go of layers the user deleted; the names of those that were in use."""
        lost = []
        for attr in ("points", "boxes"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self._viewer.layers:
                self._unwire(layer)
                setattr(self, attr, None)
                lost.append(layer.name)
        for attr in ("own_points", "own_boxes"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self._viewer.layers:
                setattr(self, attr, None)
        return lost

    def ensure(self, image: Any) -> None:
        """Create the own layers for ``image`` (again if its dimensionality differs) and use
        them where no other layer is in use."""
        for attr in ("own_points", "own_boxes"):
            layer = getattr(self, attr)
            if layer is not None and layer.ndim != image.ndim:
                self._drop(layer)  # before removing it, so it is not reported as deleted
                if layer in self._viewer.layers:
                    self._viewer.layers.remove(layer)
        self.forget_removed()
        side = max(level_shapes(image)[0][-2:])
        common = dict(scale=image.scale, translate=image.translate, ndim=image.ndim)
        if self.own_boxes is None:
            self.own_boxes = Shapes(
                name=BOXES_NAME,
                edge_color="yellow",
                face_color="transparent",
                edge_width=max(1.0, side / 160),
                **common,
            )
            self.own_boxes.mode = "add_rectangle"
            self._viewer.add_layer(self.own_boxes)
        if self.own_points is None:
            with warnings.catch_warnings():  # "label looks categorical": it is, on purpose
                warnings.filterwarnings("ignore", "Feature 'label' looks like categorical")
                self.own_points = self._new_points(common)
            self._viewer.add_layer(self.own_points)
            self.fit_markers()
        self.use(
            self.own_points if self.points is None else None,
            self.own_boxes if self.boxes is None else None,
        )

    def _drop(self, layer: Any) -> None:
        """Forget ``layer`` everywhere (it is about to be removed)."""
        for attr in ("points", "boxes", "own_points", "own_boxes"):
            if getattr(self, attr) is layer:
                if attr in ("points", "boxes"):
                    self._unwire(layer)
                setattr(self, attr, None)

    def _new_points(self, common: dict) -> Points:
        features = pd.DataFrame({"label": pd.Series([], dtype=pd.CategoricalDtype([BG, FG]))})
        return Points(
            name=POINTS_NAME,
            features=features,
            feature_defaults={"label": self.default_label},
            face_color="label",
            face_color_cycle=POINT_COLORS,
            border_color="white",
            canvas_size_limits=(MARKER_PX, MARKER_PX),  # a fixed size on screen
            **common,
        )

    def use(self, points: Points | None, boxes: Shapes | None) -> None:
        """Read prompts from these layers (None: keep the current one)."""
        for attr, layer in (("points", points), ("boxes", boxes)):
            old = getattr(self, attr)
            if layer is None or layer is old:
                continue
            if old is not None:
                self._unwire(old)
            setattr(self, attr, layer)
            self._wire(layer, toggle=attr == "points")
        self.set_default_label(self.default_label)

    def activate(self) -> None:
        """Make the points layer the active one, in add mode, so clicks land in it."""
        if self.points is not None and self.points in self._viewer.layers:
            self._viewer.layers.selection.active = self.points
            self.points.mode = "add"

    def fit_markers(self) -> None:
        """Give the own points a data size matching their fixed screen size (for picking)."""
        layer = self.own_points
        zoom = float(getattr(camera(self._viewer), "zoom", 0) or 0)
        if layer is None or zoom <= 0:
            return
        size = MARKER_PX / (zoom * float(np.mean(np.abs(layer.scale[-2:]))))
        if abs(size - float(layer.current_size)) > 0.2 * size:
            layer.current_size = size
            if len(layer.data):
                layer.size = size

    # ------------------------------------------------------------------ wiring
    def _wire(self, layer: Any, toggle: bool) -> None:
        layer.events.data.connect(self._on_change)
        keys = dict(self._keys)
        if toggle:
            keys[self._toggle_key[0]] = self._toggle_key[1]
        replaced = {}
        for key, callback in keys.items():
            replaced[key] = layer.bind_key(key, lambda _layer, cb=callback: cb(), overwrite=True)
        self._unbound[id(layer)] = replaced

    def _unwire(self, layer: Any) -> None:
        layer.events.data.disconnect(self._on_change)
        for key, old in self._unbound.pop(id(layer), {}).items():
            layer.bind_key(key, old, overwrite=True)  # None unbinds

    def disconnect(self) -> None:
        for layer in (self.points, self.boxes):
            if layer is not None:
                self._unwire(layer)

    # ------------------------------------------------------------------ reading
    def set_default_label(self, value: int) -> None:
        """Label given to the next points added (existing points keep theirs); only for a
        points layer that has a ``label`` feature."""
        self.default_label = int(value)
        pts = self.points
        if pts is None or "label" not in pts.features.columns:
            return
        defaults = {k: pts.feature_defaults[k].iloc[0] for k in pts.feature_defaults}
        try:
            pts.feature_defaults = {**defaults, "label": self.default_label}
        except (TypeError, ValueError):  # a user's label column of another kind: leave it
            pass

    def has_prompts(self) -> bool:
        return bool(
            (self.points is not None and len(self.points.data))
            or (self.boxes is not None and len(self.boxes.data))
        )

    def collect(
        self, target: ImageTarget, per_point: bool = False
    ) -> tuple[list[ObjectPrompt], list[str]]:
        """Objects on the shown slice in SAM pixels, and warnings about ignored prompts.

        ``per_point``: each foreground point is its own object (:func:`group_per_point`);
        else all points outside boxes are one (:func:`group_prompts`).
        """
        xy, labels, notes = self._points_xy(target)
        boxes = self._boxes_xyxy(target, notes)
        group = group_per_point if per_point else group_prompts
        return group(xy, labels, boxes), notes

    def _points_xy(self, target: ImageTarget) -> tuple[np.ndarray, np.ndarray, list[str]]:
        notes: list[str] = []
        xy, labels = np.zeros((0, 2)), np.zeros(0, np.int32)
        pts = self.points
        if pts is not None and len(pts.data):
            column = pts.features["label"] if "label" in pts.features.columns else None
            raw = as_point_labels(None if column is None else column.to_numpy(), len(pts.data))
            src = Frame.of(pts.scale, pts.translate)
            xy, labels, _ = points_to_sam(pts.data, raw, src, target.frame, target.slice_index)
        outside = ~inside(xy, target.plane_shape)
        if outside.any():
            notes.append(f"{int(outside.sum())} point(s) outside the image were ignored")
            xy, labels = xy[~outside], labels[~outside]
        return xy, labels, notes

    def _boxes_xyxy(self, target: ImageTarget, notes: list[str]) -> np.ndarray:
        shp = self.boxes
        if shp is None or not len(shp.data):
            return np.zeros((0, 4))
        kinds = zip(shp.data, shp.shape_type, strict=True)
        rects = [d for d, kind in kinds if kind == "rectangle"]
        if len(rects) < len(shp.data):
            notes.append("only rectangles are used as boxes; other shapes were ignored")
        src = Frame.of(shp.scale, shp.translate)
        found, _ = rectangles_to_sam(rects, src, target.frame, target.slice_index)
        clipped = [clip_box(b, target.plane_shape) for b in found]
        if any(b is None for b in clipped):
            notes.append("box(es) outside the image were ignored")
        return np.array([b for b in clipped if b is not None]).reshape(-1, 4)

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


__all__ = ["BG", "BOXES_NAME", "FG", "MARKER_PX", "POINTS_NAME", "POINT_COLORS", "PromptLayers"]
