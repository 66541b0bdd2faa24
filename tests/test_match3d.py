"""Per-slice labels merged into 3D objects (napari_sam_ms.volumes.match3d), on hand-made
label stacks whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_ms.volumes.match3d import assign, match_slices, slice_iou


def stack(*planes: list[list[int]]) -> np.ndarray:
    return np.array(planes, dtype=np.int32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renaming of the ids (0 stays 0)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist(), strict=True))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def test_one_object_through_every_slice_gets_one_id_whatever_its_slice_ids():
    planes = np.zeros((4, 6, 6), np.int32)
    planes[:, 1:4, 1:4] = [[[7]], [[1]], [[3]], [[2]]]  # another id on every slice
    planes[2, 5, 5] = 9  # a one-voxel object on its own
    result = match_slices(planes)
    assert result.count == 2 and result.dropped == 0
    assert set(np.unique(result.labels[:, 1:4, 1:4])) == {1}
    assert result.labels[2, 5, 5] == 2 and result.labels.dtype == np.uint32
    assert len(result.links) == 3 and all(iou == 1.0 for _, _, iou in result.links)


def test_ids_are_consecutive_by_decreasing_volume():
    planes = np.zeros((3, 10, 10), np.int32)
    planes[0, 0:2, 0:2] = 5  # small: 4 voxels
    planes[:, 4:9, 4:9] = 2  # large: 75 voxels
    planes[1:, 0:3, 6:9] = 1  # middle: 18 voxels
    labels = match_slices(planes).labels
    assert labels[0, 4, 4] == 1 and labels[1, 0, 6] == 2 and labels[0, 0, 0] == 3
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]


def test_touching_objects_stay_apart():
    a = [[1, 1, 2, 2], [1, 1, 2, 2]]
    result = match_slices(stack(a, a, a))
    assert result.count == 2
    assert same_partition(result.labels, stack(a, a, a))


def test_a_split_keeps_the_id_in_the_better_overlapping_part():
    # slice 0: one object of 8 pixels; slice 1: a part of 6 and a part of 2 pixels
    s0 = [[1, 1, 1, 1, 1, 1, 1, 1]]
    s1 = [[1, 1, 1, 1, 1, 1, 0, 2]]
    labels = match_slices(stack(s0, s1), min_iou=0.1).labels
    assert labels[0, 0, 0] == labels[1, 0, 0] and labels[1, 0, 7] not in (0, labels[0, 0, 0])
    assert sorted(np.unique(labels)) == [0, 1, 2]


def test_a_merge_continues_the_better_overlapping_object():
    s0 = [[1, 1, 1, 0, 2, 2, 2, 2, 2]]
    s1 = [[3, 3, 3, 3, 3, 3, 3, 3, 3]]
    labels = match_slices(stack(s0, s1), min_iou=0.2).labels
    assert labels[1, 0, 0] == labels[0, 0, 4] != labels[0, 0, 0]
    assert len(np.unique(labels)) == 3


def test_assignment_is_not_greedy_first_come():
    # Greedy by best IoU links a0-b0 (0.6) and leaves a1 alone (its only partner is b0);
    # the assignment links a0-b1 (0.55) and a1-b0 (0.5): more overlap linked in all.
    iou = np.array([[0.6, 0.55], [0.5, 0.0]])
    assert sorted(assign(iou, 0.3)) == [(0, 1, 0.55), (1, 0, 0.5)]
    assert assign(iou, 0.58) == [(0, 0, 0.6)]  # pairs below the threshold never count
    # the same on label images: a long object over two, each overlapping it differently
    s0 = [[1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 2, 2, 2, 0]]
    s1 = [[3, 3, 3, 3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 4, 4, 4, 4, 4, 4]]
    ious = slice_iou(*(np.unique(s, return_inverse=True)[1].reshape(2, 10) for s in (s0, s1)))
    np.testing.assert_allclose(ious, [[4 / 6, 0.0], [0.0, 3 / 6]])  # ids 1..n compact
    labels = match_slices(stack(s0, s1), min_iou=0.4).labels
    assert labels[0, 0, 0] == labels[1, 0, 0] and labels[0, 1, 6] == labels[1, 1, 4]


def test_below_the_link_threshold_objects_stay_apart():
    s0 = [[1, 1, 1, 1, 0, 0, 0, 0]]
    s1 = [[0, 0, 0, 1, 1, 1, 1, 0]]  # IoU 1/7
    assert match_slices(stack(s0, s1), min_iou=0.3).count == 2
    assert match_slices(stack(s0, s1), min_iou=0.1).count == 1


def test_gaps_are_bridged_only_when_asked():
    planes = np.zeros((5, 4, 4), np.int32)
    planes[[0, 1, 3, 4], 1:3, 1:3] = 1  # missing on slice 2
    assert match_slices(planes).count == 2
    bridged = match_slices(planes, max_gap=1)
    assert bridged.count == 1 and not bridged.labels[2].any()
    assert (1, 3, 1.0) in bridged.links
    planes[2] = 0
    planes[1] = 0  # now missing on two slices
    assert match_slices(planes, max_gap=1).count == 2
    assert match_slices(planes, max_gap=2).count == 1


def test_minimum_size_counts_physical_volume_with_a_scale():
    planes = np.zeros((3, 10, 10), np.int32)
    planes[:, 0:2, 0:2] = 1  # 12 voxels
    planes[:, 5:10, 5:10] = 2  # 75 voxels
    assert match_slices(planes, min_size=12).count == 2
    kept = match_slices(planes, min_size=13)
    assert kept.count == 1 and kept.dropped == 1 and not kept.labels[:, 0:2, 0:2].any()
    # anisotropic: z spacing 4, pixels 0.5 -> a voxel is 1.0; then 2.0 per voxel
    assert match_slices(planes, min_size=13, scale=(4, 0.5, 0.5)).count == 1
    assert match_slices(planes, min_size=13, scale=(4, 1, 0.5)).count == 2  # 12 vox = 24


def test_objects_on_too_few_slices_are_dropped():
    planes = np.zeros((4, 6, 6), np.int32)
    planes[0:3, 0:3, 0:3] = 1  # on slices 0..2
    planes[1, 4:6, 4:6] = 2  # a blob on one slice only
    planes[3, 4:6, 0:2] = 1  # another on the last
    assert match_slices(planes).count == 3
    thick = match_slices(planes, min_slices=2)
    assert thick.count == 1 and thick.dropped == 2 and (thick.labels[0:3, 0:3, 0:3] == 1).all()
    assert match_slices(planes, min_slices=4).count == 0


def test_empty_and_single_slices():
    assert match_slices(np.zeros((3, 4, 4), np.uint16)).count == 0
    one = match_slices(np.array([[[0, 4], [4, 0]]], np.uint8))
    assert one.count == 1 and one.labels.tolist() == [[[0, 1], [1, 0]]]
    full = match_slices(np.full((2, 2, 2), 3))  # no background at all
    assert full.count == 1 and (full.labels == 1).all()
    listed = match_slices([np.eye(3, dtype=int), np.eye(3, dtype=int) * 5])
    assert listed.count == 1


@pytest.mark.parametrize(
    ("slices", "options", "words"),
    [
        (np.zeros((4, 4), int), {}, "shape \\(Z, H, W\\)"),
        (np.zeros((2, 4, 4), float), {}, "integers"),
        (np.zeros((2, 4, 4), bool), {}, "integers"),
        (-np.ones((2, 4, 4), int), {}, ">= 0"),
        ([np.zeros((4, 4), int), np.zeros((3, 4), int)], {}, "one shape"),
        (np.zeros((2, 4, 4), int), {"min_iou": 0}, "min_iou"),
        (np.zeros((2, 4, 4), int), {"max_gap": -1}, "max_gap"),
        (np.zeros((2, 4, 4), int), {"min_slices": 0}, "min_slices"),
        (np.zeros((2, 4, 4), int), {"scale": (1, 1)}, "scale"),
        (np.zeros((2, 4, 4), int), {"scale": (1, 0, 1)}, "scale"),
    ],
)
def test_bad_input_is_refused_with_a_reason(slices, options, words):
    with pytest.raises(ValueError, match=words):
        match_slices(slices, **options)
