"""napari <-> SAM coordinate bridge (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.bridge import (
    Frame,
    as_point_labels,
    clip_box,
    from_xy,
    group_per_point,
    group_prompts,
    in_slice,
    inside,
    map_coords,
    points_to_sam,
    rectangle_to_box,
    rectangles_to_sam,
    world_to_index,
)


def test_same_frame_is_pixel_centre_plus_half():
    f = Frame.of([1, 1])
    xy, labels, keep = points_to_sam(np.array([[10, 20], [0, 0]]), [1, 0], f, f)
    np.testing.assert_allclose(xy, [[20.5, 10.5], [0.5, 0.5]])
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_array_equal(keep, [0, 1])
    np.testing.assert_allclose(from_xy(xy), [[10, 20], [0, 0]])


def test_anisotropic_scale_and_translate_between_layers():
    image = Frame.of([2.0, 0.5], [10.0, -3.0])
    points = Frame.of([1.0, 1.0], [0.0, 0.0])  # prompt layer in world units
    world = np.array([[10.0 + 2.0 * 7, -3.0 + 0.5 * 30]])  # image pixel (row 7, col 30)
    xy, _, _ = points_to_sam(world, [1], points, image)
    np.testing.assert_allclose(xy, [[30.5, 7.5]])
    np.testing.assert_allclose(map_coords(world, points, image), [[7, 30]])


def test_3d_points_kept_only_on_shown_slice():
    image = Frame.of([3.0, 1.0, 1.0], [5.0, 0.0, 0.0])
    pts = Frame.of([3.0, 1.0, 1.0], [5.0, 0.0, 0.0])
    coords = np.array([[4, 10, 11], [4.4, 1, 2], [5, 3, 3], [3.6, 0, 0]])
    xy, labels, keep = points_to_sam(coords, [1, 0, 1, 1], pts, image, slice_index=(4,))
    np.testing.assert_array_equal(keep, [0, 1, 3])
    np.testing.assert_allclose(xy[0], [11.5, 10.5])
    np.testing.assert_array_equal(labels, [1, 0, 1])


def test_2d_prompt_layer_over_3d_image_matches_every_slice():
    image = Frame.of([1, 1, 1])
    pts = Frame.of([1, 1])
    mapped = map_coords(np.array([[2.0, 3.0]]), pts, image)
    assert np.isnan(mapped[0, 0])
    assert in_slice(mapped, (7,)).all()
    xy, _, keep = points_to_sam(np.array([[2.0, 3.0]]), [1], pts, image, (7,))
    np.testing.assert_allclose(xy, [[3.5, 2.5]])


def test_world_to_index_and_levels():
    f = Frame.of([2.0, 1.0, 1.0], [1.0, 0, 0])
    assert world_to_index([9.0, 0.3, 0.7], f)[0] == 4
    lvl = Frame.of([1.0, 1.0]).level([4, 4])
    np.testing.assert_allclose(lvl.scale, [4, 4])
    np.testing.assert_allclose(lvl.translate, [1.5, 1.5])
    # level-0 pixels 8..11 form level-2 pixel 2 (centre at 9.5)
    np.testing.assert_allclose(map_coords(np.array([[9.5, 9.5]]), Frame.of([1, 1]), lvl), [[2, 2]])


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0], [1, 0, 3, 2]])
def test_rectangle_direction_does_not_matter(order):
    corners = np.array([[10.0, 5.0], [10.0, 25.0], [30.0, 25.0], [30.0, 5.0]])[order]
    np.testing.assert_allclose(rectangle_to_box(corners), [5.5, 10.5, 25.5, 30.5])


def test_rectangles_on_slices_and_scaled():
    image = Frame.of([1.0, 2.0, 2.0], [0.0, 10.0, 10.0])
    shapes = Frame.of([1.0, 1.0, 1.0])
    r_here = np.array([[2, 30, 20], [2, 30, 50], [2, 10, 50], [2, 10, 20]], float)  # reversed
    r_other = r_here.copy()
    r_other[:, 0] = 5
    boxes, keep = rectangles_to_sam([r_other, r_here], shapes, image, (2,))
    np.testing.assert_array_equal(keep, [1])
    np.testing.assert_allclose(boxes, [[5.5, 0.5, 20.5, 10.5]])


def test_inside_and_clip():
    assert list(inside(np.array([[0, 0], [10, 5], [10.1, 1], [-0.1, 2]]), (5, 10))) == [
        True,
        True,
        False,
        False,
    ]
    np.testing.assert_allclose(clip_box(np.array([-5, 2, 8, 50.0]), (20, 10)), [0, 2, 8, 20])
    assert clip_box(np.array([12, 2, 18, 5.0]), (20, 10)) is None


def test_group_points_without_boxes_is_one_object():
    objs = group_prompts(np.array([[1, 1], [5, 5]]), [1, 0], np.zeros((0, 4)))
    assert len(objs) == 1 and objs[0].box is None and len(objs[0].points) == 2
    assert group_prompts(np.array([[1, 1]]), [0], np.zeros((0, 4))) == []


def test_group_points_go_to_smallest_containing_box():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 20, 20], [50, 50, 60, 60.0]])
    xy = np.array([[15, 15], [55, 55], [80, 80], [200, 200], [300, 300]], float)
    objs = group_prompts(xy, [1, 0, 1, 1, 0], boxes)
    assert len(objs) == 4
    np.testing.assert_allclose(objs[0].points, [[80, 80]])
    np.testing.assert_allclose(objs[1].points, [[15, 15]])
    np.testing.assert_array_equal(objs[2].labels, [0])
    assert objs[3].box is None
    np.testing.assert_allclose(objs[3].points, [[200, 200], [300, 300]])
    assert objs[3].has_foreground


def test_per_point_each_foreground_point_is_an_object():
    xy = np.array([[10, 10], [50, 10], [12, 11], [48, 12], [90, 90]], float)
    objs = group_per_point(xy, [1, 1, 0, 0, 1], np.zeros((0, 4)))
    assert len(objs) == 3 and all(o.box is None for o in objs)
    # background points join the object whose foreground point is nearest
    np.testing.assert_allclose(objs[0].points, [[10, 10], [12, 11]])
    np.testing.assert_array_equal(objs[0].labels, [1, 0])
    np.testing.assert_allclose(objs[1].points, [[50, 10], [48, 12]])
    np.testing.assert_array_equal(objs[1].labels, [1, 0])
    np.testing.assert_allclose(objs[2].points, [[90, 90]])
    # background points alone make no object; nothing at all makes none
    assert group_per_point(np.array([[1, 1.0]]), [0], np.zeros((0, 4))) == []
    assert group_per_point(np.zeros((0, 2)), [], np.zeros((0, 4))) == []


def test_per_point_keeps_the_meaning_of_boxes():
    boxes = np.array([[0, 0, 20, 20], [40, 40, 60, 60.0]])
    xy = np.array([[5, 5], [8, 8], [50, 50], [100, 100], [102, 100], [200, 200]], float)
    objs = group_per_point(xy, [1, 0, 1, 1, 0, 1], boxes)
    assert len(objs) == 4
    np.testing.assert_allclose(objs[0].points, [[5, 5], [8, 8]])  # both refine box 0
    np.testing.assert_allclose(objs[0].box, boxes[0])
    np.testing.assert_allclose(objs[1].points, [[50, 50]])
    np.testing.assert_allclose(objs[2].points, [[100, 100], [102, 100]])
    np.testing.assert_array_equal(objs[2].labels, [1, 0])
    np.testing.assert_allclose(objs[3].points, [[200, 200]])
    # the same prompts in SAM's mode: the free points are one object
    assert len(group_prompts(xy, [1, 0, 1, 1, 0, 1], boxes)) == 3


def test_point_labels_from_a_label_feature():
    np.testing.assert_array_equal(as_point_labels(None, 3), [1, 1, 1])
    np.testing.assert_array_equal(as_point_labels(np.array([1, 0, 1]), 3), [1, 0, 1])
    np.testing.assert_array_equal(as_point_labels(np.array([True, False]), 2), [1, 0])
    mixed = np.array(["background", "fg", None, np.nan, 0.0, "0"], dtype=object)
    np.testing.assert_array_equal(as_point_labels(mixed, 6), [0, 1, 1, 1, 0, 0])
    assert as_point_labels(np.array([], dtype=float), 0).shape == (0,)


def test_frame_validation():
    with pytest.raises(ValueError):
        Frame.of([1, 0])
    with pytest.raises(ValueError):
        Frame.of([1, 1], [0, 0, 0])
