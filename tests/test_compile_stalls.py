"""No compile on the user's path: prompts are padded to bucket sizes with the padding hidden
from attention, graphs warm up ahead, and the engine reports what it is doing.

Tiny model with random weights; compiled decoding is compared with op-by-op execution
(Meta's token layout, no padding).
"""

from __future__ import annotations

import numpy as np
import pytest
from sam_fakes import WarmUpElsewhere, user_calls

from napari_sam_ms.engine import BUCKETS, COMPILING, EMBEDDING, PREDICTING, bucket
from napari_sam_ms.engine.buckets import HIDDEN, PAD_LABEL, pad_points, sparse_tokens
from napari_sam_ms.predictor import ImageEmbedding, SamPredictor
from napari_sam_ms.settings import Settings


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def embedding() -> ImageEmbedding:
    rng = np.random.default_rng(21)
    return ImageEmbedding(rng.normal(0, 1, (1, 32, 8, 8)).astype(np.float32), (96, 128), (96, 128))


@pytest.fixture(scope="module")
def warm(tiny, embedding) -> SamPredictor:
    """A compiled predictor of its own engine, warmed up for every kind tested below."""
    from napari_sam_ms.engine import Engine

    pred = SamPredictor(tiny, Settings(decoder_graphs=True), engine=Engine(tiny))
    compiled = pred.warm_up(multimask=(True, False), masks=(False, True), objects=(1, 2))
    assert compiled > 0
    pred.set_embedding(embedding)
    return pred


def test_buckets_and_padding():
    assert [bucket(n) for n in (0, 1, 2, 3, 4, 5, 9, 16, 17, 33)] == [2] * 3 + [16] * 5 + [32, 64]
    assert BUCKETS[0] == 2
    assert sparse_tokens(3, True, False) == 4 and sparse_tokens(3, True, True) == 5
    assert sparse_tokens(0, False, True) == 2 and sparse_tokens(0, False, False) == 0
    coords, labels = np.ones((2, 2, 2), np.float32), np.ones((2, 2), np.int32)
    padded = pad_points(coords, labels, has_box=False, batch=2)  # 2 points + "not a point"
    assert padded.coords.shape == (2, 15, 2) and padded.token_bias.shape == (2, 16)
    assert (padded.labels[:, 2:] == PAD_LABEL).all()
    assert (padded.token_bias[:, 2:15] == HIDDEN).all()
    assert (padded.token_bias[:, [0, 1, 15]] == 0).all()
    boxed = pad_points(coords, labels, has_box=True, batch=2)  # 2 points + 2 corners
    assert boxed.coords.shape == (2, 14, 2) and (boxed.token_bias[:, :2] == 0).all()
    assert (boxed.token_bias[:, 2:14] == HIDDEN).all() and (boxed.token_bias[:, 14:] == 0).all()
    one = pad_points(coords[:, :1], labels[:, :1], has_box=False, batch=2)  # bucket 2: as is
    assert one.coords.shape == (2, 1, 2) and (one.token_bias == 0).all()
    alone = pad_points(None, None, has_box=False, batch=1)  # a mask prompt alone
    assert alone.coords.shape == (1, 1, 2) and (alone.token_bias == HIDDEN).all()


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_box", [False, True])
def test_every_point_count_matches_op_by_op(tiny, warm, embedding, with_box, with_mask):
    """1..6 points, with or without a box and a mask prompt: the padded compiled graphs
    give the op-by-op (unpadded) numbers and the same thresholded masks; no compiles."""
    eager = SamPredictor(tiny, Settings(decoder_graphs=False))
    eager.set_embedding(embedding)
    rng = np.random.default_rng(22)
    box = np.array([12.0, 8.0, 90.0, 70.0]) if with_box else None
    mask = rng.normal(0, 2, (1, 32, 32)).astype(np.float32) if with_mask else None
    compiles = warm.engine.compiles
    for n in range(1, 7):
        pts = rng.uniform(0, 96, (n, 2))
        lbs = (rng.uniform(0, 1, n) > 0.3).astype(np.int32)
        for multimask in (True, False):
            want = eager.predict(pts, lbs, box, mask, multimask, return_logits=True)
            got = warm.predict(pts, lbs, box, mask, multimask, return_logits=True)
            for a, b in zip(got, want, strict=True):
                assert a.shape == b.shape
                assert rel_err(a, b) <= 1e-5, (n, multimask)
            masks = warm.predict(pts, lbs, box, mask, multimask)[0]
            np.testing.assert_array_equal(masks, want[0] > tiny.mask_threshold)
    assert warm.engine.compiles == compiles


def test_box_alone_mask_alone_and_objects_compile_nothing(tiny, warm, embedding):
    eager = SamPredictor(tiny, Settings(decoder_graphs=False))
    eager.set_embedding(embedding)
    rng = np.random.default_rng(23)
    compiles = warm.engine.compiles
    mask = rng.normal(0, 2, (1, 32, 32)).astype(np.float32)
    box = np.array([20.0, 10.0, 70.0, 60.0])
    for args in ((None, None, box, None), (None, None, None, mask)):
        want = eager.predict(*args, return_logits=True)
        got = warm.predict(*args, return_logits=True)
        for a, b in zip(got, want, strict=True):
            assert rel_err(a, b) <= 1e-5
    for objects in (2, 3, 5):
        for n in (1, 3, 6):
            pts = rng.uniform(0, 96, (objects, n, 2))
            lbs = np.ones((objects, n), np.int32)
            want = eager.predict_batch(pts, lbs, return_logits=True)
            got = warm.predict_batch(pts, lbs, return_logits=True)
            for a, b in zip(got, want, strict=True):
                assert rel_err(a, b) <= 1e-5
    assert warm.engine.compiles == compiles


def test_a_new_bucket_compiles_once(tiny, embedding):
    """Beyond the warmed buckets a point count compiles once for its bucket, which then
    serves every count that fits."""
    from napari_sam_ms.engine import Engine

    pred = SamPredictor(tiny, Settings(decoder_graphs=True), engine=Engine(tiny))
    pred.set_embedding(embedding)
    rng = np.random.default_rng(24)
    pred.predict(rng.uniform(0, 96, (20, 2)), np.ones(20, np.int32))  # 21 tokens: bucket 32
    compiles = pred.engine.compiles
    for n in (17, 25, 31):
        pred.predict(rng.uniform(0, 96, (n, 2)), np.ones(n, np.int32))
    assert pred.engine.compiles == compiles


def test_phases_are_reported(tiny):
    from napari_sam_ms.engine import Engine

    engine = Engine(tiny)
    pred = SamPredictor(tiny, Settings(decoder_graphs=True, encoder_graphs=True), engine=engine)
    seen: list[str] = []
    engine.on_phase = seen.append
    pred.set_image(np.zeros((96, 128, 3), np.uint8))
    assert seen[0] == EMBEDDING and COMPILING in seen
    seen.clear()
    pred.predict(np.array([[10.0, 20.0]]), np.array([1]))
    assert seen[0] == PREDICTING and COMPILING in seen
    seen.clear()
    pred.predict(np.array([[30.0, 20.0]]), np.array([1]))
    assert seen == [PREDICTING]  # compiled before: no compile reported
    seen.clear()
    pred.set_image(np.ones((96, 128, 3), np.uint8))
    assert seen == [EMBEDDING]


def _holder_with_warm_up(warm_up, **kwargs):
    from napari_sam_ms.interaction import ModelHolder

    class Predictor:
        engine = type("E", (), {"on_phase": None})()

    Predictor.warm_up = warm_up
    return ModelHolder(
        "tiny", loader=lambda *a: object(), predictor_factory=lambda _: Predictor(), **kwargs
    )


def test_holder_warms_up_after_loading():
    """ModelHolder follows the engine's phases and compiles the click graphs as it loads."""
    calls: list[dict] = []

    def warm_up(self, **kinds):
        calls.append(kinds)
        self.engine.on_phase(COMPILING)

    holder = _holder_with_warm_up(warm_up, background_warm_up=False)
    holder.get()
    assert calls and holder.phase == COMPILING
    assert calls[0]["objects"] == (1, 2)


def test_holder_warm_up_runs_behind_the_first_click():
    """get() returns while the warm-up compiles; a new choice stops the old warm-up
    between graphs."""
    import threading

    release, stopped = threading.Event(), threading.Event()
    runs: list[list[int]] = []  # the graphs each warm-up call compiled, in call order
    started = threading.Event()

    def warm_up(self, stop, **kinds):
        graphs: list[int] = []
        runs.append(graphs)
        started.set()
        for i in range(100):
            if stop():
                if graphs is runs[0]:
                    stopped.set()  # the old model's warm-up gave way
                return i
            graphs.append(i)
            release.wait(5)
        return 100

    holder = _holder_with_warm_up(warm_up)
    held = holder.get()  # returns at once: the warm-up waits for `release`
    assert held is holder.get() and not holder.wait_warm_up(0.05)
    assert started.wait(5)  # the old model's warm-up is under way before the new choice
    holder.choose("micro", None)
    holder.get()  # a new choice: the old warm-up is told to stop
    release.set()
    assert stopped.wait(5) and len(runs[0]) < 100
    holder.stop_warm_up()
    assert holder.wait_warm_up(5)


def test_calls_during_a_warm_up_run_op_by_op(tiny, embedding):
    """While a warm-up compiles on another thread, a click and an embedding on graphs not
    compiled yet run op by op (no compile on the user's path), with the compiled answer."""

    from napari_sam_ms.engine import Engine

    settings = Settings(decoder_graphs=True, encoder_graphs=True)
    pred = SamPredictor(tiny, settings, engine=Engine(tiny))
    engine = pred.engine
    with WarmUpElsewhere(engine):
        image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), np.uint8)
        pred.set_image(image)
        features = pred.get_image_embedding().asnumpy()
        pts, lbs = np.array([[40.0, 30.0], [70.0, 60.0]]), np.array([1, 0])
        op_by_op = pred.predict(pts, lbs, multimask_output=True, return_logits=True)
        assert engine.compiles == 0
    assert not engine.defers_compiles
    pred.set_image(image)  # now compiled on the caller's path
    compiled = pred.predict(pts, lbs, multimask_output=True, return_logits=True)
    assert engine.compiles > 0
    assert rel_err(pred.get_image_embedding().asnumpy(), features) < 1e-5
    assert rel_err(op_by_op[0], compiled[0]) < 1e-4
    np.testing.assert_allclose(op_by_op[1], compiled[1], atol=1e-5)


def test_warm_up_waits_until_the_users_calls_pause(tiny, monkeypatch):
    """A run of user calls with short gaps (an embedding's views, then a click) never waits
    for a warm-up graph: the warm-up starts one only after the calls paused USER_IDLE_S."""
    import threading
    import time

    from napari_sam_ms.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "USER_IDLE_S", 0.4)
    engine = engine_module.Engine(tiny)
    compiled: list[float] = []  # when each fake graph compile started
    stop = threading.Event()

    def warm_up():
        with engine.warming_up():
            while not stop.is_set():
                with engine.busy("compiling", wait_for_users=True):
                    compiled.append(time.monotonic())
                    time.sleep(0.3)  # a graph compile the user must not wait for

    engine_module.Engine.note_user_activity()  # as ModelHolder does after loading
    thread = threading.Thread(target=warm_up)
    thread.start()
    try:
        waits, last = user_calls(engine, "embedding")
        assert not compiled  # no graph slipped in between the user's calls
        deadline = time.monotonic() + 5
        while not compiled and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
    assert max(waits) < 0.1, waits
    assert compiled and compiled[0] - last >= 0.35  # the warm-up went on after the pause


def test_whole_image_mode_compiles_its_graphs_during_a_warm_up(tiny):
    """A click during a warm-up runs op by op (no compile on the user's path), but
    whole-image mode is one long job (Engine.bulk): its graphs compile on its path once,
    instead of hundreds of batches running op by op while the warm-up waits for it."""

    from napari_sam_ms.automatic_mask_generator import collect_candidates
    from napari_sam_ms.engine import Engine

    engine = Engine.for_model(tiny)
    with WarmUpElsewhere(engine):
        with engine.bulk():
            assert not engine.defers_compiles
        assert engine.defers_compiles  # only inside the job
        before = engine.compiles
        image = np.random.default_rng(5).integers(0, 255, (64, 64, 3), np.uint8)
        collect_candidates(tiny, image, points_per_side=4, points_per_batch=16)
        assert engine.compiles > before  # its decoder graph compiled despite the warm-up


def test_propagation_is_one_long_job_during_a_warm_up(tiny):
    """Propagation (a prediction per slice) is one long job, as whole-image mode: while a
    warm-up is under way its calls compile what they need instead of running op by op."""
    from napari_sam_ms.engine import Engine
    from napari_sam_ms.propagate import propagate_object

    class Recording:
        def __init__(self, predictor) -> None:
            self._predictor, self.defers = predictor, []

        def __getattr__(self, name):
            return getattr(self._predictor, name)

        def predict(self, *args, **kwargs):
            self.defers.append(self._predictor.engine.defers_compiles)
            return self._predictor.predict(*args, **kwargs)

    predictor = Recording(SamPredictor(tiny))
    assert predictor.engine is Engine.for_model(tiny)
    volume = np.zeros((4, 64, 64), np.uint8)
    volume[:, 20:40, 24:44] = 200
    with WarmUpElsewhere(predictor.engine):
        propagate_object(volume, 1, box=(24, 20, 44, 40), predictor=predictor)
        assert predictor.engine.defers_compiles  # outside the job: a click would defer
    assert len(predictor.defers) >= 3 and not any(predictor.defers)
