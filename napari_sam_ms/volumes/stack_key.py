"""The one content id of a stack, under which its slice embeddings are cached (numpy only).

Propagation, volumetric segmentation and the Volumes widget all key a stack's ``(z,)`` parts
by :func:`stack_id`, so that embeddings computed by one are reused by the others.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stack_id(stack: np.ndarray, limits: tuple[float, float] | None) -> str:
    """A content id of a stack (its slices along axis 0, in order) and its contrast range."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{stack.shape}|{stack.dtype.str}|{limits}".encode())
    for plane in stack:
        digest.update(memoryview(np.ascontiguousarray(plane)).cast("B"))
    return f"stack|{digest.hexdigest()}"
