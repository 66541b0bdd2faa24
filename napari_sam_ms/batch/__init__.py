"""Batch segmentation on Dask distributed (no Qt, no napari).

- :mod:`.worker`: the model a task uses, loaded once per worker process (:class:`ModelSpec`,
  :class:`ModelPlugin`, :func:`worker_model`).
"""
