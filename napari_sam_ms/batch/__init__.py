"""Batch segmentation on Dask distributed (no Qt, no napari).

- :mod:`.inputs`: files, folders, globs and ``@list.txt`` expanded into inputs.
- :mod:`.cluster`: in this process, on a local cluster or on an existing one.
- :mod:`.run`: the driver (:func:`~.run.segment_batch`, the ``segment`` command's loop).
- :mod:`.tasks`: what a worker runs for one input.
- :mod:`.manifest`: what is done, so that a rerun resumes.
- :mod:`.worker`: the model a task uses, loaded once per worker process (:class:`ModelSpec`,
  :class:`ModelPlugin`, :func:`worker_model`).
- :mod:`.plane_tasks`: one huge plane, one task per tile (:func:`plane_records`): the same
  records as the tiled generator in one process.
"""
