"""The ``wide`` synthetic kind (styles drawn per image), the old kinds left as they were, and
the Otsu-in-the-box baseline of the evaluation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import draw

from napari_sam_ms.training import evaluate, synthetic
from napari_sam_ms.training.styles import FAMILIES, INVERTED, StyleOverrides, draw_style

N_SEEDS = 50


@pytest.fixture(scope="module")
def wide() -> list[synthetic.SyntheticSample]:
    """50 ``wide`` training samples at 256 x 256 (scale 1: lengths as drawn)."""
    return list(synthetic.SyntheticDataset(N_SEEDS, "wide", "train"))


def _digest(s: synthetic.SyntheticSample) -> str:
    h = hashlib.sha256()
    for a in (s.image, s.labels, s.masks):
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# Computed from the generator before the ``wide`` kind was added.
OLD_KINDS = [
    ((0, "nuclei", (256, 256), 8, False, None), "3c530c0d486a4275"),
    ((1, "nuclei", (256, 256), 16, False, None), "2868c80374c394a5"),
    ((7, "nuclei", (192, 320), 8, True, None), "3f628dc4129ccc0c"),
    ((0, "cells", (256, 256), 8, False, None), "7bc33aded338a4ae"),
    ((5, "cells", (256, 256), 16, True, None), "1e5065a17e92e555"),
    ((1_000_001, "cells", (128, 200), 8, False, 1.5), "b93d72a23ab82a29"),
]
OLD_MIXED_TEST = ["9043f324901582a6", "bd0ae90eddcc6b4c", "697a751451db52c9", "fb825fcc88984a35"]


@pytest.mark.parametrize(("args", "digest"), OLD_KINDS)
def test_old_kinds_unchanged(args, digest):
    assert _digest(synthetic.render_sample(*args)) == digest


def test_old_mixed_dataset_unchanged():
    data = synthetic.SyntheticDataset(4, "mixed", "test", scale=(0.8, 1.25))
    assert [_digest(s) for s in data] == OLD_MIXED_TEST
    assert all(s.style is None for s in data)


def test_wide_is_reproducible_by_seed():
    a = synthetic.render_sample(3, "wide", (128, 128))
    b = synthetic.render_sample(3, "wide", (128, 128))
    c = synthetic.render_sample(4, "wide", (128, 128))
    assert a.style == b.style and a.kind == "wide"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)
    image, labels = synthetic.make_sample(3, kind="wide", shape=(128, 128))
    assert np.array_equal(image, a.image) and np.array_equal(labels, a.labels)


def test_wide_labels_are_exact(wide):
    for s in wide[:25]:
        n = int(s.labels.max())
        assert s.labels.dtype == np.uint16 and s.labels.shape == s.image.shape
        assert set(np.unique(s.labels)) == set(range(n + 1))  # contiguous, 0 = background
        assert s.masks.shape == (n, *s.labels.shape)
        for k, sl in enumerate(ndi.find_objects(s.labels.astype(np.int32)), start=1):
            own = s.labels[sl] == k
            assert ndi.label(own)[1] == 1  # one 4-connected piece
            assert not (own & ~s.masks[k - 1][sl]).any()  # inside its drawn shape


def test_wide_radii_span_3_to_40_px(wide):
    radii = []
    for s in wide:
        if s.style.objects != "nuclei":
            continue
        inner = ~s.masks[:, [0, -1], :].any(axis=(1, 2)) & ~s.masks[:, :, [0, -1]].any(axis=(1, 2))
        radii.extend(np.sqrt(s.masks[inner].sum(axis=(1, 2)) / np.pi))
    radii = np.asarray(radii)
    assert radii.min() <= 4.0 and radii.max() >= 32.0, (radii.min(), radii.max())
    assert 2.5 <= radii.min() and radii.max() <= 48.0  # 3-40 px, wobble of the outline aside
    medians = [s.style.radius for s in wide]
    assert min(medians) < 5 and max(medians) > 25  # across images too


def test_wide_bit_depths_and_polarity(wide):
    depths = {s.style.bit_depth for s in wide}
    assert depths == {8, 12, 16}
    for s in wide:
        assert s.image.dtype == (np.uint8 if s.style.bit_depth == 8 else np.uint16)
        if s.style.bit_depth == 12:
            assert s.image.max() <= 4095
    inverted = [s for s in wide if s.style.inverted]
    assert 0 < len(inverted) < len(wide)
    for s in inverted:  # dark objects on a bright background
        img = s.image.astype(float)
        assert img[s.labels > 0].mean() < img[s.labels == 0].mean()
    assert {s.style.family for s in wide} == set(FAMILIES)


def test_wide_brightness_range_reaches_10x(wide):
    ratios = []
    for s in wide:
        if s.style.inverted or s.labels.max() < 2:
            continue
        img = s.image.astype(float)
        ids = np.arange(1, int(s.labels.max()) + 1)
        means = ndi.mean(img, s.labels, ids) - np.median(img[s.labels == 0])
        if means.min() > 0:
            ratios.append(means.max() / means.min())
    assert max(ratios) >= 10, sorted(ratios)


def test_styles_held_out_and_kept():
    rng = np.random.default_rng(0)
    train = [draw_style(rng, StyleOverrides(exclude=("phase",))).family for _ in range(200)]
    assert "phase" not in train and set(train) == set(FAMILIES) - {"phase"}
    held = synthetic.SyntheticDataset(
        4, "wide", "test", shape=(64, 64), styles=StyleOverrides(only=("phase",))
    )
    assert all(s.style.family == "phase" for s in held)
    flipped = synthetic.SyntheticDataset(4, "wide", "val", shape=(64, 64), invert=True)
    assert all(s.style.family in INVERTED for s in flipped)
    fixed = synthetic.render_sample(1, "wide", (64, 64), bit_depth=12)
    assert fixed.style.bit_depth == 12 and fixed.image.dtype == np.uint16
    with pytest.raises(ValueError, match="family"):
        StyleOverrides(only=("confocal",)).families()
    with pytest.raises(ValueError, match="no style family"):
        StyleOverrides(only=("phase",), exclude=("phase",)).families()


def test_otsu_baseline_on_disks():
    image = np.full((64, 64), 20.0)
    labels = np.zeros((64, 64), np.uint16)
    rr, cc = draw.disk((32, 30), 12)
    image[rr, cc], labels[rr, cc] = 200.0, 1
    rr, cc = draw.disk((5, 5), 3)  # a separate blob: not the object, outside its box
    image[rr, cc] = 200.0
    assert evaluate.otsu_box_ious(image, labels)[0] == pytest.approx(1.0)
    dark = 255.0 - image  # dark on bright
    assert evaluate.otsu_box_ious(dark, labels)[0] == pytest.approx(1.0)
    halo = dark + 40.0 * (ndi.binary_dilation(labels > 0, iterations=3) & (labels == 0))
    assert evaluate.otsu_box_ious(halo, labels)[0] > 0.95  # phase-like bright halo


def test_otsu_baseline_per_group():
    data = synthetic.SyntheticDataset(4, "wide", "test", shape=(96, 96))
    figures = evaluate.otsu_baseline(data)
    assert set(figures) == {s.style.family for s in data} | {"all"}
    assert figures["all"]["n_images"] == 4
    assert 0.0 < figures["all"]["otsu_box_miou"] <= 1.0
