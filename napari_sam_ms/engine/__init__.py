"""Compiled execution of SAM: encoder stage graphs, decoder graphs and their caches.

One :class:`Engine` per model, shared by its predictors; each predictor runs it through its
own :class:`Runner` (its settings, its image's cache)."""

from .buckets import BUCKETS, bucket
from .decoder import (
    ClickKey,
    DecoderGraphs,
    PromptsKey,
    RowsKey,
    TokensKey,
    UpscaleKey,
    decode_fn,
    prompt_fn,
)
from .encoder import EncoderGraphs, TinyViTGraphs, encoder_graphs, stage_indexes
from .engine import (
    COMPILING,
    EMBEDDING,
    LOADING,
    PHASES,
    PREDICTING,
    Engine,
    background_job,
    long_job,
)
from .runner import Prompts, Runner

__all__ = [
    "BUCKETS",
    "COMPILING",
    "EMBEDDING",
    "LOADING",
    "PHASES",
    "PREDICTING",
    "ClickKey",
    "DecoderGraphs",
    "EncoderGraphs",
    "Engine",
    "background_job",
    "long_job",
    "Prompts",
    "PromptsKey",
    "RowsKey",
    "Runner",
    "TinyViTGraphs",
    "TokensKey",
    "UpscaleKey",
    "bucket",
    "decode_fn",
    "encoder_graphs",
    "prompt_fn",
    "stage_indexes",
]
