"""Contact sheet of the ``wide`` kind: 16 training samples, each shown plain and with outlines.

python docs/make_synthetic_sheet.py [FIRST_SEED] [OUT_PNG]
"""

import sys

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from napari_sam_ms.training.synthetic import SyntheticDataset

first = int(sys.argv[1]) if len(sys.argv) > 1 else 0
out = sys.argv[2] if len(sys.argv) > 2 else "docs/images/synthetic_wide.png"
data = SyntheticDataset(16, "wide", first)
tiles = []
for s in data:
    img = s.image.astype(np.float64)
    lo, hi = np.percentile(img, (0.5, 99.8))
    g = (np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=2)
    lined = rgb.copy()
    lined[find_boundaries(s.labels, mode="inner")] = (255, 60, 200)
    pair = np.concatenate([rgb, np.full((256, 4, 3), 255, np.uint8), lined], axis=1)
    tile = Image.fromarray(pair)
    st = s.style
    text = f"{st.family} r={st.radius:.0f} {st.bit_depth}-bit n={int(s.labels.max())}"
    d = ImageDraw.Draw(tile)
    d.rectangle((0, 0, 6 * len(text) + 4, 12), fill=(0, 0, 0))
    d.text((2, 1), text, fill=(255, 255, 0))
    tiles.append(np.asarray(tile))
pad = 8
h, w = tiles[0].shape[:2]
sheet = np.full((4 * h + 5 * pad, 4 * w + 5 * pad, 3), 255, np.uint8)
for i, t in enumerate(tiles):
    r, c = divmod(i, 4)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    sheet[y : y + h, x : x + w] = t
Image.fromarray(sheet).save(out, optimize=True)
print(out, sheet.shape)
