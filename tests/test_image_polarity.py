"""Polarity detection and model-input inversion (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.sample_data import fluorescent_nuclei
from napari_sam_ms.utils.image import invert_for_model, looks_dark_on_bright, to_rgb_uint8


@pytest.fixture(scope="module")
def nuclei_rgb() -> np.ndarray:
    return to_rgb_uint8(fluorescent_nuclei(shape=(256, 256), n_nuclei=20))


def _blobs(background: int, fg: int, fraction: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:200, :200]
    image = np.full((200, 200), background, np.float32)
    mask = np.zeros((200, 200), bool)
    while mask.mean() < fraction:
        cy, cx, r = rng.uniform(0, 200), rng.uniform(0, 200), rng.uniform(6, 14)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    image[mask] = fg
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_fluorescence_is_bright_on_dark(nuclei_rgb: np.ndarray) -> None:
    assert looks_dark_on_bright(nuclei_rgb) is False


def test_inverted_fluorescence_is_dark_on_bright(nuclei_rgb: np.ndarray) -> None:
    assert looks_dark_on_bright(invert_for_model(nuclei_rgb)) is True


def test_uint16_converted_bright_field() -> None:
    image = fluorescent_nuclei(shape=(256, 256), n_nuclei=20, seed=3)
    bright_field = (65535 - image.astype(np.int64) * 20).clip(0, 65535).astype(np.uint16)
    assert looks_dark_on_bright(to_rgb_uint8(bright_field)) is True
    assert looks_dark_on_bright(to_rgb_uint8(image)) is False
    assert looks_dark_on_bright(bright_field) is True  # non-uint8 converted inside


def test_he_like_rgb() -> None:
    """White background, pink cytoplasm, purple nuclei."""
    rng = np.random.default_rng(1)
    rgb = np.full((240, 240, 3), (242, 240, 245), np.float32)
    yy, xx = np.mgrid[:240, :240]
    for _ in range(25):
        cy, cx = rng.uniform(0, 240, 2)
        cell = (yy - cy) ** 2 + (xx - cx) ** 2 < 15**2
        rgb[cell] = (225, 160, 200)
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 6**2] = (90, 60, 140)
    rgb += rng.normal(0, 4, rgb.shape)
    assert looks_dark_on_bright(rgb.clip(0, 255).astype(np.uint8)) is True


@pytest.mark.parametrize(
    ("background", "fg", "fraction", "expected"),
    [
        (30, 200, 0.15, False),  # sparse bright objects on dark
        (30, 200, 0.40, False),  # dense bright objects on dark
        (220, 60, 0.15, True),  # sparse dark objects on bright
        (220, 60, 0.40, True),  # dense dark objects on bright
    ],
)
def test_blobs(background: int, fg: int, fraction: float, expected: bool) -> None:
    assert looks_dark_on_bright(_blobs(background, fg, fraction)) is expected


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_images_are_not_inverted(value: int) -> None:
    assert looks_dark_on_bright(np.full((64, 64, 3), value, np.uint8)) is False


def test_low_contrast_noise_is_not_inverted() -> None:
    noise = np.random.default_rng(0).normal(200, 2, (64, 64)).clip(0, 255).astype(np.uint8)
    assert looks_dark_on_bright(noise) is False


def test_invert_for_model() -> None:
    rgb = np.array([[[0, 10, 255]]], np.uint8)
    out = invert_for_model(rgb)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 3)
    np.testing.assert_array_equal(out, [[[255, 245, 0]]])
    np.testing.assert_array_equal(rgb, [[[0, 10, 255]]])  # input untouched
    np.testing.assert_array_equal(invert_for_model(invert_for_model(rgb)), rgb)
    gray = np.array([[0, 255]], np.uint8)
    np.testing.assert_array_equal(invert_for_model(gray), [[[255] * 3, [0] * 3]])
