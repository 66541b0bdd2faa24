"""Volumes: helpers for objects through the slices of a stack (numpy and scipy only).

:mod:`~napari_sam_ms.volumes.slice_prompts` makes the next slice's prompt from the previous
slice's mask; :func:`napari_sam_ms.propagate.propagate` drives the model with it.
"""
