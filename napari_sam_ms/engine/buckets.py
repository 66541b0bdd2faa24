"""Prompt shapes in buckets, so a new number of points never compiles a new graph.

``ms.jit`` compiles a graph per input shape. Compiled decoding therefore pads the sparse
prompt tokens of every call to a bucket size (:data:`BUCKETS`: 2, 16, then powers of two;
each bucket is a graph to compile, and tokens cost time) with *padding points* whose
tokens are hidden from every attention where they would be keys (a large negative score
bias, ``MaskDecoder.predict_tokens(token_bias=...)``): the real tokens' results are the
same as without padding, up to round-off. (Padding with SAM's own "not a point" tokens,
label -1, would change the output: those tokens are attended to.)

Token layouts (Meta's, then the padding appended to the points):

- points, no box: points, padding, the "not a point" token the prompt encoder appends;
- points and a box: points, padding, two box corners;
- a box alone: two box corners (already bucket 2);
- neither (a mask prompt alone, or nothing): one padding point and the appended
  "not a point" token, both hidden (Meta's decoder sees no sparse tokens then).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BUCKETS = (2, 16)  # one click graph for a single click (or a box), one for up to 16 tokens
PAD_LABEL = -2  # a padding point: neither foreground, background nor "not a point"
HIDDEN = -1e30  # score bias of a hidden token: exp underflows to exactly 0


def bucket(tokens: int) -> int:
    """The bucket size for ``tokens`` sparse tokens: the smallest of :data:`BUCKETS` that
    holds them, beyond the largest the smallest power of two that does."""
    for size in BUCKETS:
        if tokens <= size:
            return size
    size = BUCKETS[-1]
    while size < tokens:
        size *= 2
    return size


def sparse_tokens(points: int, has_points: bool, has_box: bool) -> int:
    """Sparse tokens Meta's prompt encoder makes: points (+1 "not a point" without a box),
    +2 box corners."""
    count = points + 1 if has_points and not has_box else points if has_points else 0
    return count + (2 if has_box else 0)


class Padded(NamedTuple):
    """Prompt arrays padded to a bucket, and the score bias of their sparse tokens."""

    coords: np.ndarray | None  # (B, P, 2) float32
    labels: np.ndarray | None  # (B, P) int32
    token_bias: np.ndarray  # (B, S) float32: 0 for real tokens, HIDDEN for padding


def pad_points(
    coords: np.ndarray | None, labels: np.ndarray | None, has_box: bool, batch: int
) -> Padded:
    """Pad the points of a prompt batch so that its sparse tokens fill a bucket.

    Args:
        coords: (B, N, 2) points or None; labels: (B, N) or None.
        has_box: a box prompt is given (its two tokens follow the points).
        batch: B.
    """
    n = 0 if coords is None else coords.shape[1]
    has_points = coords is not None
    real = sparse_tokens(n, has_points, has_box)
    if not has_points and has_box:
        return Padded(None, None, np.zeros((batch, real), np.float32))
    size = bucket(real)
    if not has_points:  # no sparse tokens: one padding point and its "not a point" token
        pad_coords = np.zeros((batch, 1, 2), np.float32)
        pad_labels = np.full((batch, 1), PAD_LABEL, np.int32)
        return Padded(pad_coords, pad_labels, np.full((batch, size), HIDDEN, np.float32))
    extra = size - real
    coords = np.concatenate([coords, np.zeros((batch, extra, 2), np.float32)], 1)
    labels = np.concatenate([labels, np.full((batch, extra), PAD_LABEL, np.int32)], 1)
    bias = np.zeros((batch, size), np.float32)
    bias[:, n : n + extra] = HIDDEN
    return Padded(coords.astype(np.float32), labels.astype(np.int32), bias)


__all__ = ["BUCKETS", "HIDDEN", "PAD_LABEL", "Padded", "bucket", "pad_points", "sparse_tokens"]
