"""One model's compiled execution: its encoder stage graphs and decoder graphs.

:meth:`Engine.for_model` gives every predictor of a model the same :class:`Engine`, so a
graph compiles once per model and process (the four views of a mirror-averaged predictor,
the whole-image generator and the widgets share them). An engine holds the model's parts,
not the model: it is dropped with the model.
"""

from __future__ import annotations

import weakref

from ..modeling import Sam
from .decoder import DecoderGraphs
from .encoder import EncoderGraphs


class Engine:
    """The compiled graphs and caches of one model, shared by its predictors.

    Args:
        model: the model whose parts the graphs run.
    """

    _shared: weakref.WeakKeyDictionary[Sam, Engine] = weakref.WeakKeyDictionary()

    def __init__(self, model: Sam) -> None:
        self.encoder_graphs = EncoderGraphs(model.image_encoder)
        self.decoder_graphs = DecoderGraphs(model.prompt_encoder, model.mask_decoder)

    @classmethod
    def for_model(cls, model: Sam) -> Engine:
        """The engine shared by all predictors of ``model`` (made on first use)."""
        engine = cls._shared.get(model)
        if engine is None:
            engine = cls._shared[model] = cls(model)
        return engine


__all__ = ["Engine"]
