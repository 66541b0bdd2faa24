"""Pre- and post-processing helpers (numpy only)."""

from .plane_source import PlaneSource
from .tiling import Tile, TileGrid, default_tile_shape, needs_tiling, suggest_zoom

__all__ = ["PlaneSource", "Tile", "TileGrid", "default_tile_shape", "needs_tiling", "suggest_zoom"]
