"""napari-sam-ms: Segment Anything on MindSpore, with napari widgets.

The public API uses Meta's names::

    from napari_sam_ms import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator
    from napari_sam_ms import pipeline  # the model card's pipeline("segment_anything", ...)
    from napari_sam_ms import segment_batch  # many images, in-process or on Dask

Nothing here imports Qt or napari (the widgets live in ``napari_sam_ms._qt``).
"""

import os

# MindSpore logs routine warnings at import; show errors only unless the user asks otherwise.
os.environ.setdefault("GLOG_v", "3")
# MindSpore's fused CPU kernels run on OpenMP (libgomp), whose idle threads by default spin
# after every parallel region; once encoder graphs had run on MindSpore's actor thread, that
# spinning took a core from every later graph (docs/performance.md, passive waiting).
# Read once, when MindSpore loads libgomp: it must be set before MindSpore is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .automatic_mask_generator import SamAutomaticMaskGenerator  # noqa: E402
from .batch.run import segment_batch  # noqa: E402
from .build_sam import (  # noqa: E402
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
)
from .pipeline import pipeline  # noqa: E402
from .predictor import ImageEmbedding, SamPredictor  # noqa: E402
from .propagate import propagate  # noqa: E402
from .runtime import configure  # noqa: E402
from .tiled import TiledPredictor  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ImageEmbedding",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "TiledPredictor",
    "__version__",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "configure",
    "pipeline",
    "propagate",
    "sam_model_registry",
    "segment_batch",
]
