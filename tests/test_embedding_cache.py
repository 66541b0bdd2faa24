"""Embedding cache: memory LRU, atomic disk entries, stale/corrupt detection."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_sam_ms.embedding_cache import EmbeddingCache, default_cache_dir, image_key, model_id
from napari_sam_ms.predictor import ImageEmbedding


def _emb(seed: int = 0) -> ImageEmbedding:
    rng = np.random.default_rng(seed)
    return ImageEmbedding(rng.random((1, 4, 8, 8), dtype=np.float32), (30, 40), (96, 128))


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)


def test_key_depends_on_content_shape_model_and_extra():
    a = _img()
    k = image_key(a, "m")
    assert k == image_key(a.copy(), "m")
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_key(b, "m") != k
    assert image_key(a.reshape(40, 30, 3), "m") != k
    assert image_key(a, "m2") != k
    assert image_key(a, "m", (3,)) != k
    assert image_key(a, "m", (3,)) != image_key(a, "m", (4,))


def test_memory_lru_evicts_oldest(tmp_path):
    cache = EmbeddingCache(cache_dir=False, max_items=2)
    for i in range(3):
        cache.put(f"k{i}", _emb(i), "m")
    assert cache.get("k0", "m") is None
    assert cache.get("k2", "m") is not None
    assert len(cache) == 2


def test_disk_roundtrip_survives_a_new_cache(tmp_path):
    key = image_key(_img(), "m")
    EmbeddingCache(tmp_path).put(key, _emb(), "m")
    got = EmbeddingCache(tmp_path).get(key, "m")
    np.testing.assert_array_equal(got.features, _emb().features)
    assert got.original_size == (30, 40) and got.input_size == (96, 128)
    assert not list(tmp_path.glob("*.tmp"))


def test_persist_false_and_disabled_disk(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put("k", _emb(), "m", persist=False)
    assert cache.get("k", "m") is not None
    assert not list(tmp_path.iterdir())
    off = EmbeddingCache(False)
    off.put("k", _emb(), "m")
    assert off.cache_dir is None and off.get("k", "m") is not None


def test_model_mismatch_is_ignored_and_removed(tmp_path):
    EmbeddingCache(tmp_path).put("k", _emb(), "model-a")
    cache = EmbeddingCache(tmp_path)
    assert cache.get("k", "model-b") is None
    assert not (tmp_path / "k.npz").exists()


def test_corrupt_and_truncated_files_are_ignored(tmp_path):
    EmbeddingCache(tmp_path).put("good", _emb(), "m")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cache = EmbeddingCache(tmp_path)
    assert cache.get("trunc", "m") is None
    assert cache.get("junk", "m") is None
    assert not (tmp_path / "trunc.npz").exists() and not (tmp_path / "junk.npz").exists()


def test_file_renamed_to_other_key_is_stale(tmp_path):
    EmbeddingCache(tmp_path).put("a", _emb(), "m")
    os.replace(tmp_path / "a.npz", tmp_path / "b.npz")
    assert EmbeddingCache(tmp_path).get("b", "m") is None


def test_old_format_version_is_stale(tmp_path):
    e = _emb()
    np.savez(
        tmp_path / "k.npz",
        version=np.int64(0),
        key=np.str_("k"),
        model=np.str_("m"),
        features=e.features,
        original_size=np.array(e.original_size),
        input_size=np.array(e.input_size),
    )
    assert EmbeddingCache(tmp_path).get("k", "m") is None


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    cache = EmbeddingCache(tmp_path)
    cache.put("k", _emb(), "m")  # logged, not raised
    assert list(tmp_path.iterdir()) == []
    assert cache.get("k", "m") is not None  # memory still serves it


def test_disk_size_limit_prunes_oldest(tmp_path):
    cache = EmbeddingCache(tmp_path, max_disk_bytes=1)
    cache.put("a", _emb(0), "m")
    cache.put("b", _emb(1), "m")
    assert len(list(tmp_path.glob("*.npz"))) <= 1


def test_env_overrides_dir(use_settings, tmp_path, monkeypatch):
    use_settings(cache_dir=str(tmp_path / "emb"))
    assert default_cache_dir() == tmp_path / "emb"
    assert EmbeddingCache().cache_dir == tmp_path / "emb"
    use_settings(cache_dir="off")
    assert EmbeddingCache().cache_dir is None
    use_settings(cache_dir=None)
    assert default_cache_dir().name == "embeddings"


def test_model_id_tracks_checkpoint_file(tmp_path):
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"1")
    a = model_id("vit_b", ckpt)
    ckpt.write_bytes(b"22")
    assert model_id("vit_b", ckpt) != a
    assert model_id("vit_b", None) == "vit_b:none"


def test_cached_embedding_restores_predictor():
    from napari_sam_ms.build_sam import sam_model_registry
    from napari_sam_ms.predictor import SamPredictor

    predictor = SamPredictor(sam_model_registry["tiny"]())
    img = _img()
    predictor.set_image(img)
    cache = EmbeddingCache(False)
    key = image_key(img, "tiny")
    cache.put(key, predictor.embedding, "tiny")
    want = predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))[0]
    predictor.reset_image()
    predictor.set_embedding(cache.get(key, "tiny"))
    got = predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_key_accepts_any_contiguous_dtype(dtype):
    assert len(image_key(np.ones((3, 3), dtype), "m")) == 40
