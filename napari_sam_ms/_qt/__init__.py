"""napari widgets (all Qt code of the plugin lives in this package)."""

from __future__ import annotations

from .auto_widget import AutoWidget
from .prompt_widget import PromptWidget

__all__ = ["AutoWidget", "PromptWidget"]
