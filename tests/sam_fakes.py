"""Test doubles for the widget tests: a predictor whose masks are disks around the prompt."""

from __future__ import annotations

import numpy as np

from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.loader import LoadedModel
from napari_sam_ms.predictor import ImageEmbedding

RADII = (3, 6, 9)  # candidate masks: disks of these radii
SCORES = (0.5, 0.9, 0.7)  # so the best is the middle one (radius 6), then radius 9


class FakePredictor:
    """Disks of ``RADII`` around the first foreground point (or the box centre)."""

    def __init__(self) -> None:
        self.set_image_calls = 0
        self.set_embedding_calls = 0
        self.predict_calls: list[dict] = []
        self.images: list[np.ndarray] = []
        self.is_image_set = False
        self._shape = (0, 0)

    def set_image(self, image: np.ndarray) -> None:
        self.set_image_calls += 1
        self.images.append(image)
        self._shape = image.shape[:2]
        self.is_image_set = True

    @property
    def embedding(self) -> ImageEmbedding:
        return ImageEmbedding(np.zeros((1, 2, 2, 2), np.float32), self._shape, self._shape)

    def set_embedding(self, emb: ImageEmbedding) -> None:
        self.set_embedding_calls += 1
        self._shape = tuple(emb.original_size)
        self.is_image_set = True

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        self.predict_calls.append(dict(points=point_coords, labels=point_labels, box=box))
        if point_coords is not None and np.any(point_labels == 1):
            x, y = point_coords[np.argmax(point_labels == 1)]
        else:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        h, w = self._shape
        yy, xx = np.mgrid[:h, :w] + 0.5  # pixel centres in SAM's frame
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        masks = np.stack([d2 <= r * r for r in RADII])
        return masks, np.array(SCORES, np.float32), np.zeros((3, 4, 4), np.float32)


def fake_holder(predictor: FakePredictor, persistent: bool = False) -> ModelHolder:
    """A model holder whose loader makes no model and whose predictor is ``predictor``
    (``persistent``: its embeddings may go to the disk cache)."""

    def load(model_type, checkpoint):
        cache_id = f"fake:{model_type}"
        return LoadedModel(object(), model_type, None, cache_id, random_weights=not persistent)

    return ModelHolder(loader=load, predictor_factory=lambda loaded: predictor)


def disk(shape, centre_rc, radius) -> np.ndarray:
    """The disk FakePredictor draws for a click on pixel ``centre_rc``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre_rc[0]) ** 2 + (xx - centre_rc[1]) ** 2 <= radius * radius


class WarmUpElsewhere:
    """A warm-up 'under way' on another thread (``engine.warming_up()`` held) until exit."""

    def __init__(self, engine) -> None:
        import threading

        self._engine = engine
        self._inside, self._leave = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with self._engine.warming_up():
            self._inside.set()
            self._leave.wait(60)

    def __enter__(self):
        self._thread.start()
        assert self._inside.wait(10) and self._engine.defers_compiles
        return self

    def __exit__(self, *exc) -> None:
        self._leave.set()
        self._thread.join()


def user_calls(engine, name: str, n: int = 8) -> tuple[list[float], float]:
    """``n`` user calls 0.1 s apart, each 0.05 s: (each call's wait for the lock, end time)."""
    import time

    waits, last = [], 0.0
    for _ in range(n):
        time.sleep(0.1)
        t = time.monotonic()
        with engine.busy(name):
            waits.append(time.monotonic() - t)
            time.sleep(0.05)
        last = time.monotonic()
    return waits, last
