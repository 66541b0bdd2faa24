"""Volumes: helpers for objects through the slices of a stack (numpy and scipy only).

:mod:`~napari_sam_ms.volumes.slice_prompts` makes the next slice's prompt from the previous
slice's mask; :func:`napari_sam_ms.propagate.propagate` drives the model with it.
:mod:`~napari_sam_ms.volumes.match3d` links per-slice labels into 3D objects
(:func:`napari_sam_ms.segment_volume.segment_volume`), :mod:`~napari_sam_ms.volumes.stack_key`
names a stack for the embedding cache, :mod:`~napari_sam_ms.volumes.label_objects` finds a
label in a stack for the Volumes widget.
"""
