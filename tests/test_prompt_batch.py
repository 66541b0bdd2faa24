"""Several objects in one model call (interaction.predict_objects), on the tiny model."""

from __future__ import annotations

import numpy as np

from napari_sam_ms.bridge import ObjectPrompt
from napari_sam_ms.interaction import predict_objects
from napari_sam_ms.predictor import SamPredictor


class Counting(SamPredictor):
    """A plain predictor that counts its single and batched calls."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls = {"predict": 0, "predict_batch": 0}
        self._inside = False  # predict may call predict_batch itself

    def predict(self, *args, **kwargs):
        self.calls["predict"] += 1
        self._inside = True
        try:
            return super().predict(*args, **kwargs)
        finally:
            self._inside = False

    def predict_batch(self, *args, **kwargs):
        self.calls["predict_batch"] += 0 if self._inside else 1
        return super().predict_batch(*args, **kwargs)


def _obj(points, labels=None, box=None) -> ObjectPrompt:
    pts = None if points is None else np.asarray(points, float)
    lbs = None if pts is None else np.asarray(labels or [1] * len(pts), np.int32)
    return ObjectPrompt(pts, lbs, None if box is None else np.asarray(box, float))


def test_objects_alike_share_a_call_and_equal_their_own_predict(tiny):
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    predictor = Counting(tiny)
    predictor.set_image(image)
    objects = [
        _obj([[20.5, 15.5]]),
        _obj([[60.5, 40.5], [64.5, 44.5]], [1, 0]),
        _obj([[100.5, 70.5]]),
        _obj(None, box=[10, 10, 50, 40]),
        _obj([[30.5, 30.5]], box=[20, 20, 60, 60]),
        _obj(None, box=[60, 50, 120, 90]),
    ]
    masks, scores = predict_objects(predictor, objects)
    # groups: one point (2 objects), two points (1), box only (2), point and box (1)
    assert predictor.calls == {"predict": 2, "predict_batch": 2}
    assert len(masks) == len(scores) == len(objects)
    for obj, m, s in zip(objects, masks, scores, strict=True):
        want_m, want_s, _ = SamPredictor.predict(predictor, obj.points, obj.labels, obj.box)
        assert m.shape == (3, 96, 128) and m.dtype == bool
        np.testing.assert_allclose(s, want_s, atol=1e-5)
        assert np.mean(m != want_m) < 1e-3
