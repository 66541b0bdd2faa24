"""Stacks of 2D images, and third-party warnings and log lines made one line (numpy only)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import tifffile

from napari_sam_ms.utils.io import ImageWarning, read_image, write_labels_tiff
from napari_sam_ms.utils.quiet import captured, one_line, one_line_messages
from napari_sam_ms.utils.stacks import (
    id_offsets,
    iter_planes,
    plane_layout,
    rgb_planes,
    slice_entries,
    stack_labels,
    stack_limits,
)


# ------------------------------------------------------------------------ layout
@pytest.mark.parametrize(
    "shape, lead, plane, channels",
    [
        ((48, 64), (), (48, 64), None),
        ((48, 64, 3), (), (48, 64), 3),
        ((48, 64, 4), (), (48, 64), 4),
        ((48, 64, 1), (), (48, 64), 1),
        ((5, 256, 256), (5,), (256, 256), None),
        ((3, 64, 64), (3,), (64, 64), None),  # channels first reads as three planes
        ((2, 5, 48, 64), (2, 5), (48, 64), None),
        ((5, 48, 64, 3), (5,), (48, 64), 3),
    ],
)
def test_plane_layout(shape, lead, plane, channels):
    layout = plane_layout(shape)
    assert (layout.lead, layout.plane, layout.channels) == (lead, plane, channels)
    assert layout.is_stack == bool(lead) and layout.count == int(np.prod(lead))
    assert layout.labels_shape == (*lead, *plane)


def test_plane_layout_refuses():
    with pytest.raises(ValueError, match="two colour channels"):
        plane_layout((48, 64, 2))
    with pytest.raises(ValueError, match="at least two axes"):
        plane_layout((64,))


def test_planes_in_c_order_and_rgb_with_one_range():
    stack = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5) * 100
    got = list(iter_planes(stack))
    assert [i for i, _ in got] == list(np.ndindex(2, 3))
    for index, plane in got:
        np.testing.assert_array_equal(plane, stack[index])
    assert [i for i, _ in iter_planes(np.zeros((4, 5)))] == [()]
    assert stack_limits(stack) == (0.0, float(stack.max()))
    rgb = dict(rgb_planes(stack))
    assert rgb[(0, 0)].shape == (4, 5, 3) and rgb[(0, 0)].dtype == np.uint8
    assert rgb[(0, 0)][0, 0, 0] == 0 and rgb[(1, 2)][-1, -1, 0] == 255  # one range for all
    assert rgb[(0, 1)].max() < 255  # not stretched plane by plane
    floats = np.array([[[np.nan, 1.0], [2.0, 3.0]]])
    assert stack_limits(floats) == (1.0, 3.0)
    assert stack_limits(np.zeros((2, 3, 3), np.uint8)) is None  # uint8 is used as is


def test_stack_labels_ids_across_or_per_slice():
    a = np.array([[1, 0, 0, 0, 0], [2, 2, 0, 0, 0]], np.uint16)
    b = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.uint16)
    empty = np.zeros((2, 5), np.uint16)
    layout = plane_layout((3, 2, 5))
    labels, offsets = stack_labels([a, empty, b], layout)
    assert offsets == [0, 2, 2] and labels.dtype == np.uint16 and labels.shape == (3, 2, 5)
    np.testing.assert_array_equal(labels[0], a)
    assert not labels[1].any() and labels[2, 0, 1] == 3 and labels[2, 0, 0] == 0
    labels, offsets = stack_labels([a, empty, b], layout, ids="per-slice")
    assert offsets == [0, 0, 0]
    np.testing.assert_array_equal(labels[2], b)
    single, offsets = stack_labels([a], plane_layout((2, 5)))
    np.testing.assert_array_equal(single, a)
    assert offsets == [0]
    with pytest.raises(ValueError, match="ids"):
        id_offsets([1], ids="volume")
    with pytest.raises(ValueError, match="expected 3 planes"):
        stack_labels([a], layout)


def test_stack_labels_widen_past_uint16():
    big = np.arange(1, 40001, dtype=np.uint16).reshape(200, 200)
    labels, offsets = stack_labels([big, big], plane_layout((2, 200, 200)))
    assert labels.dtype == np.uint32 and offsets == [0, 40000] and labels.max() == 80000


def test_slice_entries_shift_labels():
    layout = plane_layout((2, 1, 4, 5))
    rows = [[{"label": 1, "area": 5}], [{"label": 1, "area": 3}, {"label": 2, "area": 1}]]
    entries = slice_entries(layout, rows, [0, 1], seconds=[0.5, 0.25])
    assert entries == [
        {"index": [0, 0], "count": 1, "seconds": 0.5, "objects": [{"label": 1, "area": 5}]},
        {
            "index": [1, 0],
            "count": 2,
            "seconds": 0.25,
            "objects": [{"label": 2, "area": 3}, {"label": 3, "area": 1}],
        },
    ]


# ---------------------------------------------------------------------- quiet
def test_one_line_drops_library_object_names():
    text = "<tifffile.TiffPages @100000> invalid offset\n  to first page 100000"
    assert one_line(text) == "invalid offset to first page 100000"
    assert one_line("x" * 500).endswith("...") and len(one_line("x" * 500)) == 300


def test_captured_collects_logs_and_warnings(caplog):
    with captured() as said:
        logging.getLogger("tifffile").warning("<tifffile.TiffFile 'a.tif'> bad tag 270")
        logging.getLogger("tifffile").info("not a problem")
        warnings.warn("overflow encountered", RuntimeWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        warnings.warn("overflow encountered", RuntimeWarning, stacklevel=1)
    assert said.lines() == ["bad tag 270", "overflow encountered"]
    assert not caplog.records  # nothing reached the root logger
    assert logging.getLogger("tifffile").propagate and not logging.getLogger("tifffile").handlers


def test_one_line_messages_for_the_command_line():
    lines: list[str] = []
    with one_line_messages(lines.append):
        warnings.warn("something\n  about the data", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        logging.getLogger("some.library").warning("a line\nwith a break")
        logging.getLogger("some.library").info("chatter")
    assert lines == ["something about the data", "a line with a break"]


# --------------------------------------------------------------------------- io
def test_read_image_reports_tifffile_in_its_own_words(tmp_path, caplog):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + (100000).to_bytes(4, "little") + bytes(64))
    with pytest.raises(ValueError) as info:
        read_image(bad)
    assert str(info.value) == f"{bad}: cannot read TIFF (invalid offset to first page 100000)"
    assert not caplog.records


def test_read_image_turns_reader_warnings_into_one_image_warning(tmp_path, monkeypatch):
    path = tmp_path / "ok.tif"
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    tifffile.imwrite(path, data)
    real = tifffile.imread

    def chatty(*args, **kwargs):
        logging.getLogger("tifffile").warning("<tifffile.TiffPage 0 @8> truncated strip")
        warnings.warn("invalid value encountered in cast", RuntimeWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imread", chatty)
    with pytest.warns(ImageWarning) as record:
        np.testing.assert_array_equal(read_image(path), data)
    assert [str(w.message) for w in record] == [
        f"{path}: truncated strip",
        f"{path}: invalid value encountered in cast",
    ]


def test_labels_tiff_holds_a_stack(tmp_path):
    for shape in [(4, 5), (2, 4, 5), (2, 3, 4, 5)]:
        labels = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # writing says nothing
            path = write_labels_tiff(tmp_path / "l.tif", labels, overwrite=True)
        np.testing.assert_array_equal(tifffile.imread(path), labels)  # shape kept
