"""The model card's converter command: ``python -m napari_sam_ms.convert_weight --torch_path
path/sam_vit_b_01ec64.pth`` writes ``path/sam_vit_b_01ec64.ckpt`` (see
:mod:`napari_sam_ms.weights.convert`)."""

import sys

from .weights.convert import convert, main

__all__ = ["convert", "main"]

if __name__ == "__main__":
    sys.exit(main())
