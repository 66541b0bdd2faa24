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


def test_key_changes_exactly_when_an_input_changes():
    a = _img()
    k = image_key(a, "m")
    # the same model input, model and extra: the same key, however the array is laid out
    assert image_key(a.copy(), "m") == k
    assert image_key(np.asfortranarray(a), "m") == k
    flipped = a[:, ::-1]  # a non-contiguous view
    assert image_key(flipped, "m") == image_key(flipped.copy(), "m")
    assert image_key(a, "m", (3, "tile")) == image_key(a.copy(), "m", (3, "tile"))
    # each input changed alone: a new key
    b = a.copy()
    b[0, 0, 0] ^= 1
    changed = {
        "content": image_key(b, "m"),
        "shape": image_key(a.reshape(40, 30, 3), "m"),  # same bytes
        "dtype": image_key(a.view(np.int8), "m"),  # same bytes and shape
        "model": image_key(a, "m2"),
        "extra": image_key(a, "m", (3,)),
        "other extra": image_key(a, "m", (4,)),
    }
    assert k not in changed.values()
    assert len(set(changed.values())) == len(changed)
    assert all(len(v) == 40 and int(v, 16) >= 0 for v in [k, *changed.values()])


def test_memory_lru_evicts_least_recently_used(tmp_path):
    cache = EmbeddingCache(cache_dir=False, max_items=2)
    cache.put("k0", _emb(0), "m")
    cache.put("k1", _emb(1), "m")
    assert cache.get("k0", "m") is not None  # k0 is now the most recent
    cache.put("k2", _emb(2), "m")
    assert cache.get("k1", "m") is None
    np.testing.assert_array_equal(cache.get("k0", "m").features, _emb(0).features)
    np.testing.assert_array_equal(cache.get("k2", "m").features, _emb(2).features)
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


def test_disk_size_limit_prunes_least_recently_used(tmp_path):
    """Beyond the limit the files read or written longest ago go; reading one keeps it."""
    EmbeddingCache(tmp_path).put("size", _emb(0), "m")
    size = (tmp_path / "size.npz").stat().st_size
    (tmp_path / "size.npz").unlink()
    cache = EmbeddingCache(tmp_path, max_disk_bytes=2 * size + size // 2)  # room for two
    cache.put("a", _emb(0), "m")
    cache.put("b", _emb(1), "m")
    past = os.stat(tmp_path / "a.npz").st_mtime - 100  # file times are coarse: set them
    os.utime(tmp_path / "a.npz", (past, past))
    os.utime(tmp_path / "b.npz", (past + 10, past + 10))
    assert EmbeddingCache(tmp_path).get("a", "m") is not None  # read from disk: now newest
    cache.put("c", _emb(2), "m")
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == ["a", "c"]
    fresh = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(fresh.get("a", "m").features, _emb(0).features)
    assert fresh.get("b", "m") is None


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


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, bool])
def test_key_accepts_any_dtype_and_tells_dtypes_apart(dtype):
    ones = np.ones((3, 3), dtype)
    key = image_key(ones, "m")
    assert key == image_key(ones.copy(), "m") and len(key) == 40
    others = [t for t in (np.uint8, np.uint16, np.float32, np.float64, bool) if t is not dtype]
    assert all(image_key(ones.astype(t), "m") != key for t in others)


# ------------------------------------------------------------------ parts (zarr)
def _part_file(root, kind: str, name: str = "features"):
    files = [p for p in root.glob(f"parts/*.zarr/{kind}.{name}/c/**/*") if p.is_file()]
    assert len(files) == 1
    return files[0]


def test_parts_round_trip_and_slices_live_beside_tiles(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put_part("img", "m", "tiles_96x96_h16x16_z1", (1, 2), (3, 4), _emb(1))
    cache.put_part("img", "m", "slices", (7,), (10,), _emb(2))
    fresh = EmbeddingCache(tmp_path)
    tile = fresh.get_part("img", "m", "tiles_96x96_h16x16_z1", (1, 2), (3, 4))
    np.testing.assert_array_equal(tile.features, _emb(1).features)
    assert (tile.original_size, tile.input_size) == ((30, 40), (96, 128))
    np.testing.assert_array_equal(
        fresh.get_part("img", "m", "slices", (7,), (10,)).features, _emb(2).features
    )
    assert fresh.get_part("img", "m", "slices", (6,), (10,)) is None  # never written
    assert fresh.get_part("img", "other model", "slices", (7,), (10,)) is None
    assert fresh.get_part("other image", "m", "slices", (7,), (10,)) is None
    assert len(list(tmp_path.glob("parts/*.zarr"))) == 1  # one group per (image, model)
    # another grid for the same kind: the old parts are not mistaken for the new ones
    assert fresh.get_part("img", "m", "slices", (7,), (12,)) is None


def test_corrupt_or_unfinished_parts_are_recomputed(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    cache.put_part("img", "m", "tiles", (0, 0), (2, 2), _emb(1))
    chunk = _part_file(tmp_path, "tiles")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # half-written
    assert EmbeddingCache(tmp_path).get_part("img", "m", "tiles", (0, 0), (2, 2)) is None
    # a chunk that decodes but holds other numbers: the checksum tells
    cache.put_part("img", "m", "tiles", (0, 0), (2, 2), _emb(1))
    other = EmbeddingCache(tmp_path / "other")
    other.put_part("img", "m", "tiles", (0, 0), (2, 2), _emb(2))
    chunk.write_bytes(_part_file(tmp_path / "other", "tiles").read_bytes())
    assert EmbeddingCache(tmp_path).get_part("img", "m", "tiles", (0, 0), (2, 2)) is None

    # killed between the features chunk and its completion record
    def killed(_features):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_sam_ms.embedding_cache._checksum", killed)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingCache(tmp_path).put_part("img", "m", "tiles", (1, 1), (2, 2), _emb(3))
    monkeypatch.undo()
    assert EmbeddingCache(tmp_path).get_part("img", "m", "tiles", (1, 1), (2, 2)) is None
    cache = EmbeddingCache(tmp_path)  # and a rewrite then works
    cache.put_part("img", "m", "tiles", (1, 1), (2, 2), _emb(3))
    got = EmbeddingCache(tmp_path).get_part("img", "m", "tiles", (1, 1), (2, 2))
    np.testing.assert_array_equal(got.features, _emb(3).features)


def test_parts_of_another_layout_are_rebuilt(tmp_path, monkeypatch):
    EmbeddingCache(tmp_path).put_part("img", "m", "tiles", (0, 0), (1, 1), _emb(1))
    monkeypatch.setattr("napari_sam_ms.embedding_cache.PARTS_LAYOUT", 99)
    cache = EmbeddingCache(tmp_path)
    assert cache.get_part("img", "m", "tiles", (0, 0), (1, 1)) is None
    cache.put_part("img", "m", "tiles", (0, 0), (1, 1), _emb(2))
    import zarr

    (group,) = tmp_path.glob("parts/*.zarr")
    assert zarr.open_group(str(group), mode="r").attrs["layout"] == 99
    got = EmbeddingCache(tmp_path).get_part("img", "m", "tiles", (0, 0), (1, 1))
    np.testing.assert_array_equal(got.features, _emb(2).features)


def test_parts_size_cap_evicts_least_recently_used_groups(tmp_path):
    EmbeddingCache(tmp_path / "one").put_part("img", "m", "tiles", (0, 0), (1, 1), _emb(0))
    one = sum(p.stat().st_size for p in (tmp_path / "one").rglob("*") if p.is_file())
    cache = EmbeddingCache(tmp_path / "c", max_part_bytes=int(2.5 * one))
    tmp_path = tmp_path / "c"
    for i in range(3):
        cache.put_part(f"img{i}", "m", "tiles", (0, 0), (1, 1), _emb(i))
        os.utime(cache._group_dir(f"img{i}", "m"), (1000 + i, 1000 + i))
    cache.put_part("img3", "m", "tiles", (0, 0), (1, 1), _emb(3))
    left = sorted(p.name for p in (tmp_path / "parts").glob("*.zarr"))
    assert cache._group_dir("img3", "m").name in left and 1 <= len(left) < 4
    assert cache._group_dir("img0", "m").name not in left  # the oldest went first
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get_part("img0", "m", "tiles", (0, 0), (1, 1)) is None
    assert fresh.get_part("img3", "m", "tiles", (0, 0), (1, 1)) is not None
    cache.clear(disk=True)
    assert not (tmp_path / "parts").exists()
