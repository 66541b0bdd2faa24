"""Batch segmentation on Dask distributed (no Qt, no napari).

- :mod:`.worker`: the model a task uses, loaded once per worker process (:class:`ModelSpec`,
  :class:`ModelPlugin`, :func:`worker_model`).
- :mod:`.plane_tasks`: one huge plane, one task per tile (:func:`plane_records`): the same
  records as the tiled generator in one process.
"""
