"""The image encoder as compiled graphs: one graph per *stage* kind, shared by its stages.

A stage is a run of consecutive blocks that ends at a global block or after
``Settings.stage_blocks`` blocks (see :func:`stage_indexes`): vit_b's twelve blocks are four
stages of (windowed, windowed, global), so one graph serves all. A private template per
stage kind is compiled once and, before each stage, its blocks' weights are copied into it
(``ops.assign``), so the graphs follow the encoder's current weights. The patch embedding
and the neck are compiled too. Same arithmetic as op-by-op execution.

Stages rather than one graph per block: MindSpore's CPU runtime runs a small graph in the
calling thread and a larger one on its actor thread, which computes a share itself. One
graph over all blocks is avoided: compiling it needs more memory than a laptop has.

MobileSAM's TinyViT encoder runs as :class:`TinyViTGraphs` instead (one graph per part of
it, see there); :func:`encoder_graphs` picks the class for an encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

from mindspore import Parameter, Tensor, nn, ops

from .. import runtime
from ..modeling.image_encoder import Block, ImageEncoderViT
from ..modeling.tiny_vit import TinyViT


class StageKey(NamedTuple):
    """What a stage template is compiled for: its blocks' constructor arguments."""

    kinds: tuple[tuple, ...]
    fused: bool


class StageTemplate(NamedTuple):
    """A compiled stage: the template cell, its parameters in order, and its graph."""

    cell: nn.Cell
    params: list[Parameter]
    graph: runtime.FusedGraph


class EncoderGraphs:
    """Runs an image encoder as compiled stage graphs (see the module docstring).

    Args:
        encoder: the encoder whose weights the graphs run with.
        compiling: context manager factory entered around each compile (see
            :class:`~napari_sam_ms.runtime.FusedGraph`).
    """

    def __init__(
        self,
        encoder: ImageEncoderViT,
        compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.encoder = encoder
        self.compiling = compiling
        self.templates: dict[StageKey, StageTemplate] = {}
        self.embed: dict[bool, runtime.FusedGraph] = {}
        self.neck: dict[bool, runtime.FusedGraph] = {}

    @property
    def compiles(self) -> int:
        """Graphs compiled so far: one per graph and input shape."""
        graphs = [t.graph for t in self.templates.values()]
        graphs += [*self.embed.values(), *self.neck.values()]
        return sum(len(g.signatures) for g in graphs)

    def stages(self, max_blocks: int) -> list[list[Block]]:
        """The encoder's blocks grouped into the stages that run as one graph each."""
        blocks = list(self.encoder.blocks)
        flags = [blk.window_size == 0 for blk in blocks]
        return [[blocks[i] for i in run] for run in stage_indexes(flags, max_blocks)]

    def template(self, stage: list[Block], fused: bool) -> StageTemplate:
        """The compiled template for blocks of ``stage``'s kinds (made on first use)."""
        key = StageKey(tuple(tuple(sorted(blk.kind.items())) for blk in stage), fused)
        if key not in self.templates:
            cell = _Stage([blk.kind for blk in stage])
            cell.set_train(False)
            graph = runtime.FusedGraph(cell.construct, fused, self.compiling)
            self.templates[key] = StageTemplate(cell, list(cell.get_parameters()), graph)
        return self.templates[key]

    def __call__(self, x: Tensor, max_blocks: int, fused: bool) -> Tensor:
        """The encoder's output for the preprocessed images ``x`` (B, 3, S, S).

        Args:
            max_blocks: most blocks in one stage graph.
            fused: compile new graphs with graph kernel fusion.
        """
        if fused not in self.embed:
            # Through plain functions: compiling the encoder's bound ``embed`` method itself
            # made later graphs that contain the encoder (e.g. a training step) return its
            # embedding channels-last (MindSpore 2.10).
            embed, neck = _plain(self.encoder.embed), _plain(self.encoder.neck)
            self.embed[fused] = runtime.FusedGraph(embed, fused, self.compiling)
            self.neck[fused] = runtime.FusedGraph(neck, fused, self.compiling)
        x = self.embed[fused](x)
        for stage in self.stages(max_blocks):
            template = self.template(stage, fused)
            sources = (p for blk in stage for p in blk.get_parameters())
            for dst, src in zip(template.params, sources, strict=True):
                ops.assign(dst, src)
            x = template.graph(x)
        return self.neck[fused](x.transpose(0, 3, 1, 2))


class TinyViTGraphs:
    """Runs MobileSAM's TinyViT encoder as compiled graphs: one for the stem, one per
    stage, one for the neck (vit_t: six graphs, ~2 s per 1024-pixel image fused on a
    2-core CPU after a 20-50 s first compile).

    One graph per stage rather than per block: stages are short (2 to 6 blocks) and differ
    in width, so blocks share no graph; a stage's tokens leave its graph contiguous.

    The graphs hold the encoder's own parameters, so they follow its current weights.
    Same arithmetic as op-by-op execution.

    Args:
        encoder: the encoder to run.
        compiling: context manager factory entered around each compile.
    """

    def __init__(
        self,
        encoder: TinyViT,
        compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.encoder = encoder
        self.compiling = compiling
        self.graphs: dict[bool, list[runtime.FusedGraph]] = {}

    @property
    def compiles(self) -> int:
        """Graphs compiled so far: one per graph and input shape."""
        return sum(len(g.signatures) for graphs in self.graphs.values() for g in graphs)

    def parts(self) -> list[Callable]:
        """The functions compiled one graph each, in order. With early features
        (``encoder.return_early``) the first is the stem and the first stage's MBConv
        blocks, whose output is the early features, and its patch merging comes next."""
        enc = self.encoder

        def neck(x: Tensor) -> Tensor:
            return enc.neck(enc.to_map(x))

        if not enc.return_early:
            return [enc.patch_embed, *enc.layers, neck]
        first = enc.layers[0]

        def stem(x: Tensor) -> Tensor:
            return first.mbconv(enc.patch_embed(x))

        merge = [] if first.downsample is None else [first.downsample]
        return [stem, *merge, *list(enc.layers)[1:], neck]

    def __call__(self, x: Tensor, max_blocks: int, fused: bool) -> Tensor | tuple[Tensor, Tensor]:
        """The encoder's output for the preprocessed images ``x`` (B, 3, S, S): the
        embedding, or (embedding, early features) when the encoder returns both.

        Args:
            max_blocks: unused (ViT stages only).
            fused: compile new graphs with graph kernel fusion.
        """
        if fused not in self.graphs:
            self.graphs[fused] = [
                runtime.FusedGraph(_plain(part), fused, self.compiling) for part in self.parts()
            ]
        early = None
        for i, graph in enumerate(self.graphs[fused]):
            x = graph(x)
            if i == 0 and self.encoder.return_early:
                early = x
        return x if early is None else (x, early)


def encoder_graphs(
    encoder: ImageEncoderViT | TinyViT,
    compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> EncoderGraphs | TinyViTGraphs:
    """The compiled runner of an image encoder: ViT stages or TinyViT parts."""
    if isinstance(encoder, TinyViT):
        return TinyViTGraphs(encoder, compiling)
    return EncoderGraphs(encoder, compiling)


def _plain(fn: Callable) -> Callable:
    """A plain function that calls ``fn`` (a cell or a bound method), for ``ms.jit``."""

    def call(x: Tensor) -> Tensor:
        return fn(x)

    return call


def stage_indexes(is_global: list[bool], max_blocks: int) -> list[list[int]]:
    """Block indexes grouped into stages: consecutive runs that end at a global block or
    after ``max_blocks`` blocks (at least 1). vit_b (global 2, 5, 8, 11) with 3:
    ``[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]``."""
    size = max(1, max_blocks)
    runs: list[list[int]] = []
    run: list[int] = []
    for i, glob in enumerate(is_global):
        run.append(i)
        if glob or len(run) >= size:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


class _Stage(nn.Cell):
    """Consecutive blocks as one cell: the template a stage graph is compiled from."""

    def __init__(self, kinds: list[dict]) -> None:
        super().__init__()
        self.blocks = nn.CellList([Block(**kind) for kind in kinds])

    def construct(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


__all__ = [
    "EncoderGraphs",
    "StageKey",
    "StageTemplate",
    "TinyViTGraphs",
    "encoder_graphs",
    "stage_indexes",
]
