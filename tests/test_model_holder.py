"""Widgets' model holders share one loaded model per choice, each with its own predictor;
background work (precomputing embeddings) gives way to the user's calls."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from sam_fakes import user_calls

from napari_sam_ms.engine import engine as engine_module
from napari_sam_ms.loader import LoadedModel
from napari_sam_ms.model_holder import ModelHolder


class _Predictor:
    def __init__(self, loaded):
        self.loaded = loaded


@pytest.fixture
def counting():
    """A fake loader counting its loads, and a predictor factory (one predictor per call)."""
    loads: list[tuple] = []

    def load(model_type, checkpoint):
        loads.append((model_type, checkpoint))
        return LoadedModel(
            model=object(), model_type=model_type, checkpoint=None, cache_id=model_type
        )

    return loads, load, _Predictor


def test_holders_of_one_choice_share_the_model_not_the_predictor(counting):
    loads, load, factory = counting
    a = ModelHolder("micro", loader=load, predictor_factory=factory)
    b = ModelHolder("micro", loader=load, predictor_factory=factory)
    held_a, held_b = a.get(), b.get()
    assert loads == [("micro", None)]  # loaded once
    assert held_a.loaded is held_b.loaded
    assert held_a.predictor is not held_b.predictor  # each widget embeds its own image
    b.choose("vit_b", None)
    b.get()
    assert loads == [("micro", None), ("vit_b", None)]
    assert a.get() is held_a  # a keeps its model
    c = ModelHolder("micro", loader=load, predictor_factory=factory)
    assert c.get().loaded is held_a.loaded and len(loads) == 2
    del a, c  # the last holders of micro go: micro is freed
    gc.collect()
    d = ModelHolder("micro", loader=load, predictor_factory=factory)
    assert d.get().loaded is not held_a.loaded
    assert loads[-1] == ("micro", None) and len(loads) == 3


def test_other_loaders_do_not_share(counting):
    loads, load, factory = counting
    _, other_load, _ = counting
    ModelHolder("micro", loader=load, predictor_factory=factory).get()
    ModelHolder("micro", loader=lambda *c: load(*c), predictor_factory=factory).get()
    assert len(loads) == 2


def test_background_work_gives_way_to_the_user(tiny, monkeypatch):
    """A precompute's calls (inside Engine.background) wait while the user's calls come
    0.1 s apart, never make the user wait more than a moment, and go on after the pause;
    nested calls inside a background call do not deadlock."""
    monkeypatch.setattr(engine_module, "USER_IDLE_S", 0.4)
    engine = engine_module.Engine(tiny)
    started: list[float] = []
    stop = threading.Event()

    def precompute():
        with engine.background():
            while not stop.is_set():
                with engine.busy("embedding"):
                    started.append(time.monotonic())
                    with engine.busy("embedding"):  # nested: the lock is this thread's
                        time.sleep(0.2)

    engine_module.Engine.note_user_activity()
    thread = threading.Thread(target=precompute)
    thread.start()
    try:
        waits, last = user_calls(engine, "predicting")
        assert not started
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert max(waits) < 0.1, waits
    assert len(started) >= 2 and started[0] - last >= 0.35
