"""One huge plane on Dask: each tile of a tiled whole-image run is a task.

:func:`plane_records` gives the same records as the tiled generator run in one process
(``make_generator(model, **params, **tiling).generate(PlaneSource(lazy))``), in three steps:

1. A *plan* task opens the file lazily on a worker and returns the plane's shape, its
   contrast limits (read once from the same sample :class:`PlaneSource` reads in one process,
   so every tile is scaled alike) and the number of tiles of the generator's own
   :meth:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator.tile_grid`. The
   client reads no pixels and loads no model.
2. One *tile* task per tile carries only a :class:`PlaneJob` (path, :class:`ModelSpec`,
   settings: a few hundred bytes), the tile's index and the limits. The worker opens the file
   lazily, reads only that tile's outer area, takes the model from :func:`worker_model`
   (loaded once per process) and runs the generator's own
   :meth:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator.collect_tile`
   (collect + the tile's own filters). It returns the tile's candidates: boxes in plane
   pixels, masks as compact RLEs over the tile's outer area, never full-plane masks.
3. A *finish* task takes the tiles' candidates in tile order and runs the generator's own
   :meth:`~napari_sam_ms.automatic_mask_generator.SamAutomaticMaskGenerator.finish_tiled`;
   only the records come back to the client (``progress(done, total)`` counts tiles as
   they complete, :func:`distributed.as_completed`).

Objects on tile borders are merged at object level before anything is painted: a mask
touching a side of its tile's outer area that lies inside the plane is dropped
(:func:`~napari_sam_ms.amg_tiles.cut_keep`; the halo lets a neighbouring tile hold that
object whole), and duplicates from overlapping halos are removed across tiles
(:func:`~napari_sam_ms.amg_tiles.dedup_across_tiles`), so each object is one record from
one tile, whole. Label ids are then given once, over all records, when they are painted
(:func:`napari_sam_ms.cli_io.write_labels`, on the client): they are global by
construction, where dask-image's ``label`` numbers each chunk's objects on their own and
needs a second pass that compares chunk faces and relabels them into one numbering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .worker import ModelSpec, worker_model

if TYPE_CHECKING:
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..utils.amg import MaskData


@dataclass(frozen=True)
class PlaneJob:
    """What every task of one plane carries (small: no model, no pixels).

    Args:
        path: the TIFF or zarr plane, as every worker can read it.
        spec: the model (:func:`worker_model` loads it once per worker process).
        params: whole-image settings (as ``make_generator`` takes them, ``invert`` included).
        tiling: ``tile_shape``, ``halo`` and ``zoom`` (``cli_io.choose_tiling``'s settings).
    """

    path: str
    spec: ModelSpec
    params: dict[str, Any]
    tiling: dict[str, Any]

    def generator(self) -> SamAutomaticMaskGenerator:
        """This process's generator for the job (the model is loaded once per process)."""
        from ..pipeline import make_generator

        return make_generator(worker_model(self.spec).model, **self.params, **self.tiling)

    def source(self, lazy: Any, limits: tuple[float, float] | None = None) -> Any:
        """The plane as a :class:`PlaneSource` with the plane's contrast limits."""
        from ..utils.plane_source import PlaneSource

        return PlaneSource(lazy, contrast_limits=limits)


def plane_records(
    client: Any,
    path: Path,
    spec: ModelSpec,
    params: dict,
    tiling_settings: dict,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """The records of a tiled whole-image run of the plane at ``path``, one task per tile.

    Args:
        client: a ``distributed.Client``; its workers must read ``path`` and the checkpoint.
        path: a 2D TIFF or zarr plane (read lazily by the workers).
        spec: the model; a worker whose checkpoint differs raises ModelMismatchError.
        params: whole-image settings (``make_generator``'s keywords, without tiles).
        tiling_settings: ``tile_shape``, ``halo``, ``zoom``.
        progress: ``progress(done, total)`` over tiles, from (0, T) to (T, T); returning
            False cancels the tasks and raises GenerationCancelled.

    Returns:
        The generator's records (as ``generate`` returns them with these tiles).

    Raises:
        ValueError: no ``tile_shape``, unknown settings, or an input that is not a plane;
            errors of the tasks (ModelMismatchError...) are raised as they were raised.
    """
    from distributed import as_completed

    from ..amg_settings import check_names
    from ..automatic_mask_generator import GenerationCancelled
    from ..progress import StepCounter

    if not tiling_settings.get("tile_shape"):
        raise ValueError("plane_records needs tiling_settings with a tile_shape")
    check_names({**params, **tiling_settings})
    where = str(Path(path).expanduser().resolve())
    job = PlaneJob(where, spec, dict(params), dict(tiling_settings))
    shape, limits, n_tiles = client.submit(plan_task, job, pure=False).result()
    tiles = [client.submit(tile_task, job, t, limits, pure=False) for t in range(n_tiles)]
    finish = client.submit(finish_task, job, shape, *tiles, pure=False)
    counter = StepCounter(progress, n_tiles, GenerationCancelled, "plane segmentation", "tiles")
    try:
        counter.report()
        for done in as_completed(tiles, loop=client.loop):  # the given client, not a default
            if done.status == "error":
                done.result()  # raises the task's error
            counter.step()
        return finish.result()
    finally:
        client.cancel([*tiles, finish])


@contextlib.contextmanager
def _plane(job: PlaneJob) -> Iterator[Any]:
    """The job's plane, opened lazily (only what is sliced from it is read)."""
    from ..cli_io import is_plane, open_lazy

    with open_lazy(Path(job.path)) as lazy:
        if lazy is None or not is_plane(lazy.shape):
            what = "unreadable or not a TIFF/zarr" if lazy is None else f"shape {lazy.shape}"
            raise ValueError(f"{job.path}: not a 2D TIFF or zarr plane ({what})")
        yield lazy


def plan_task(job: PlaneJob) -> tuple[tuple[int, int], tuple[float, float] | None, int]:
    """(plane shape, contrast limits, number of tiles), on a worker."""
    with _plane(job) as lazy:
        source = job.source(lazy)
        return source.shape, source.contrast_limits, len(job.generator().tile_grid(source.shape))


def tile_task(job: PlaneJob, index: int, limits: tuple[float, float] | None) -> MaskData:
    """Tile ``index``'s candidates (collected and filtered per tile), on a worker."""
    with _plane(job) as lazy:
        source = job.source(lazy, limits)
        generator = job.generator()
        return generator.collect_tile(source, generator.tile_grid(source.shape), index)


def finish_task(job: PlaneJob, shape: Sequence[int], *crops: MaskData) -> list[dict[str, Any]]:
    """The plane's records from its tiles' candidates (in tile order), on a worker."""
    return job.generator().finish_tiled(shape, crops)


__all__ = ["PlaneJob", "finish_task", "plan_task", "plane_records", "tile_task"]
