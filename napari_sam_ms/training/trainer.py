"""Train or fine-tune SAM with simulated interactive prompts (the SAM paper's recipe, on CPU).

Each step takes a batch of objects from a few images and runs ``1 + correction_rounds``
rounds: a first prompt (one point, or a jittered box, per batch at random), then rounds
that add one correction click from the error region and feed the previous low-res logits
back as the mask input. Every round is one forward, backward and AdamW update of the
trainable parts, compiled with ``ms.jit`` (one graph per prompt structure, reused; see
:mod:`napari_sam_ms.training.steps`).

The model code is the inference code: the prompt encoder and mask decoder cells the
predictor calls. Images are drawn in random orientations (quarter turns and mirrors; off
with ``augment=False``). With a frozen image encoder every image is embedded once in each
orientation drawn and the embedding reused; with a trained encoder the first round goes
through it, later rounds reuse that round's embedding.

Progress: ``progress(info)`` is called after every step and every validation with a dict
(``event`` = ``step`` or ``validation``); returning False cancels, as does the ``cancel``
flag (a ``threading.Event`` or a callable returning True). A cancelled run stops after the
current step, saves what it has (when ``out`` is given) and reports ``cancelled=True``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mindspore import Tensor, mutable

from .. import runtime
from ..utils.io import write_json
from ..weights.checkpoint import save_checkpoint
from .data import ObjectBatch, PreparedImages, orient, sample_batch
from .evaluate import CompiledPredictor, prompt_ious
from .losses import DICE_WEIGHT, FOCAL_WEIGHT, IOU_WEIGHT
from .optim import (
    encoder_training_problem,
    focal_weight_at,
    lr_at,
    make_optimizer,
    trainable_parameters,
)
from .prompts import Prompts, add_correction, initial_prompts
from .run_state import check_same_run, read_state, restore, save_state, state_path
from .steps import (
    MASK_CHUNK_MB,
    LossWeights,
    RoundKey,
    StepOutput,
    TrainingSteps,
    masks_per_pass,
    reduce_masks,
    upscale_logits,
)

Progress = Callable[[dict[str, Any]], Any]


@dataclass
class TrainConfig:
    """Settings of a training run (stored with its log)."""

    steps: int = 200  # batches; each makes 1 + correction_rounds updates
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_images: int = 2
    objects_per_image: int = 8
    correction_rounds: int = 2
    box_prob: float = 0.5  # chance that a batch starts from boxes instead of points
    train_encoder: bool = False
    train_prompt_encoder: bool = True
    augment: bool = True  # random quarter turns and mirrors (frozen encoder: each embedded once)
    val_every: int = 50  # steps between validations (0: only at the end)
    val_at_start: bool = True  # validate before the first step (the "before" figures)
    val_prompts: tuple[str, ...] = ("point", "box")
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    seed: int = 0
    jit: bool = True
    loss_size: int | None = None  # side of the loss grid (None: the low-res logits' side)
    focal_weight: float = FOCAL_WEIGHT
    dice_weight: float = DICE_WEIGHT
    iou_weight: float = IOU_WEIGHT
    focal_alpha: float = 0.25
    # Steps over which the focal weight ramps from 0 to focal_weight (0: the paper's fixed
    # weighting). An experiment knob for SAM's start-up plateau (from random weights every
    # logit first goes negative, IoU 0): it helped on one fixed batch, not on varied data.
    focal_warmup: int = 0
    # Masks per forward/backward pass of the decoder when the image encoder is frozen (0:
    # as many as fit MASK_CHUNK_MB, see masks_per_pass). A larger batch is split and the
    # gradients of its parts summed before one update: the same update, less memory.
    mask_chunk: int = 0


@dataclass
class TrainResult:
    """What a run did: per-step metrics, validations, where it saved, whether cancelled."""

    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    steps_done: int = 0
    cancelled: bool = False
    checkpoint: Path | None = None
    seconds: float = 0.0


class SamTrainer:
    """Trains a Sam in place.

    Args:
        model: the Sam to train (same cells as inference).
        train: sequence of (image, labels) pairs or samples with ``.image``/``.labels``.
        val: held-out pairs for the validation figures (None: no validation).
        config: the run's settings.
        out: checkpoint path (``.ckpt``); a ``.json`` log is written beside it.
        progress: called with a dict after every step and validation; False cancels.
        cancel: a ``threading.Event`` or callable; set/True cancels.
        log: called with one line of text per validation and at the end (None: silent).
        keep_state: also keep the run's resumable state beside ``out`` at every save (see
            :mod:`.run_state`; removed once the run is complete), so :meth:`resume` can go on.
        run_info: JSON-able settings outside ``config`` that define the run (its data), kept
            with the state and checked on resume.
    """

    def __init__(
        self,
        model,
        train: Sequence,
        val: Sequence | None = None,
        config: TrainConfig | None = None,
        out: str | Path | None = None,
        progress: Progress | None = None,
        cancel: Any = None,
        log: Callable[[str], Any] | None = print,
        keep_state: bool = False,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        device = runtime.configure()
        self.model = model
        self.config = config or TrainConfig()
        if self.config.train_encoder and device == "CPU":
            problem = encoder_training_problem(model)
            if problem is not None:
                raise ValueError(problem)
        self.set_train_data(train)
        self.schedule: dict[int, Sequence] = {}  # step -> training set from that step on
        self.val = val
        self.out = Path(out) if out is not None else None
        self.progress, self.cancel, self.log = progress, cancel, log
        cfg = self.config
        self.params = trainable_parameters(model, cfg.train_encoder, cfg.train_prompt_encoder)
        self.optimizer = make_optimizer(self.params, cfg)
        weights = LossWeights(cfg.dice_weight, cfg.iou_weight, cfg.focal_alpha)
        self.steps = TrainingSteps(model, self.optimizer, weights, cfg.grad_clip, cfg.jit)
        self._predictor: CompiledPredictor | None = None
        self.rng = np.random.default_rng(cfg.seed)
        self.loss_size = cfg.loss_size or model.prompt_encoder.mask_input_size[0]
        self._focal = Tensor(np.float32(cfg.focal_weight))
        self.keep_state, self.run_info = keep_state and out is not None, dict(run_info or {})
        self._resumed: TrainResult | None = None

    def resume(self) -> int:
        """Go on with the run whose state is kept beside ``out`` (same settings required):
        the weights, AdamW's moments, the generator and the log so far; returns its steps."""
        path = state_path(self.out)
        params, info = read_state(path)
        check_same_run(info["config"], asdict(self.config), "training settings", path)
        check_same_run(info["run"], self.run_info, "run settings", path)
        restore(self.model, self.optimizer, self.rng, params, info, f"the training state {path}")
        done = int(info["steps_done"])
        self._resumed = TrainResult(info["history"], info["validation"], done)
        self._say(f"resuming {path.name} after step {done} of {self.config.steps}")
        return done

    # ----------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train for ``config.steps`` steps (or until cancelled), validate, save."""
        cfg = self.config
        result = self._resumed or TrainResult()
        first = result.steps_done
        start = time.perf_counter()
        self.model.set_train(True)
        try:
            if self.val is not None and cfg.val_at_start and not first:
                if self._validate_into(result, 0) is False:
                    result.cancelled = True
            stages = [s for s in self.schedule if 0 < s <= first]
            if stages:  # a resumed run trains on the data of the stage it stopped in
                self.set_train_data(self.schedule[max(stages)])
            for step in range(first, first if result.cancelled else cfg.steps):
                if self._cancel_requested():
                    result.cancelled = True
                    break
                metrics = self.train_step(step)
                metrics["seconds"] = time.perf_counter() - start
                result.history.append(metrics)
                result.steps_done = step + 1
                if self._report({"event": "step", "total": cfg.steps, **metrics}) is False:
                    result.cancelled = True
                    break
                last = step + 1 == cfg.steps
                due = last or (cfg.val_every and (step + 1) % cfg.val_every == 0)
                if self.val is not None and due:
                    if self._validate_into(result, step + 1) is False:
                        result.cancelled = True
                        break
                if self.out is not None and cfg.save_every and (step + 1) % cfg.save_every == 0:
                    self.save(self.out, result)
        finally:
            self.model.set_train(False)
        if (
            result.cancelled
            and self.val is not None
            and result.steps_done
            and (not result.validation or result.validation[-1]["step"] != result.steps_done)
        ):
            self._validate_into(result, result.steps_done)
        result.seconds = time.perf_counter() - start
        if self.out is not None and result.steps_done:
            result.checkpoint = self.save(self.out, result)
        saved = f"; saved {result.checkpoint}" if result.checkpoint else ""
        state = "cancelled" if result.cancelled else "done"
        self._say(f"{state} after {result.steps_done} steps in {result.seconds:.0f} s{saved}")
        return result

    def train_step(self, step: int) -> dict[str, float]:
        """One batch: the first prompt and the correction rounds, one update each."""
        cfg = self.config
        if step in self.schedule:
            self.set_train_data(self.schedule[step])
        lr = lr_at(step, cfg)
        self.optimizer.learning_rate.set_data(Tensor(np.float32(lr)))
        batch = sample_batch(
            self.images,
            self.candidates,
            self.rng,
            cfg.batch_images,
            cfg.objects_per_image,
            cfg.augment,
        )
        gt = Tensor(reduce_masks(batch.masks, self.loss_size))
        self._focal = Tensor(np.float32(focal_weight_at(step, cfg.focal_weight, cfg.focal_warmup)))
        owner = Tensor(batch.owner)
        prompts = initial_prompts(batch.masks, self.rng, self.rng.random() < cfg.box_prob)
        embeddings = None if cfg.train_encoder else self._frozen(batch)
        metrics: dict[str, float] = {"step": step + 1, "lr": lr}
        for r in range(1 + cfg.correction_rounds):
            with_encoder = cfg.train_encoder and r == 0
            src = Tensor(batch.pixels) if with_encoder else embeddings
            out = self._round(with_encoder, prompts, src, owner, gt)
            if with_encoder:  # with HQ fusion, later rounds take (embeddings, early)
                embeddings = (
                    out.embeddings if out.early is None else _pair(out.embeddings, out.early)
                )
            best = out.best.asnumpy()
            rows = np.arange(len(best))
            metrics[f"loss{r}"] = float(out.loss.asnumpy())
            metrics[f"iou{r}"] = float(out.iou.asnumpy()[rows, best].mean())
            if r < cfg.correction_rounds:
                logits = out.low_res.asnumpy()[rows, best]
                chosen = upscale_logits(logits, batch.masks.shape[-1]) > 0
                prompts = add_correction(prompts, chosen, batch.masks, logits, self.rng)
        rounds = range(1 + cfg.correction_rounds)
        metrics["loss"] = float(np.mean([metrics[f"loss{r}"] for r in rounds]))
        metrics["start"] = "box" if prompts.boxes is not None else "point"
        return metrics

    # -------------------------------------------------------------- helpers
    @property
    def predictor(self) -> CompiledPredictor:
        """The predictor that embeds frozen-encoder images and runs the validation."""
        if self._predictor is None:
            self._predictor = CompiledPredictor(self.model)
        return self._predictor

    def set_train_data(self, train: Sequence) -> None:
        """Train on ``train`` from now on (the model and optimizer state carry over)."""
        images = PreparedImages(train, self.model.img_size)
        candidates = images.usable()
        if not candidates:
            raise ValueError("no training image has a labelled object")
        self.images, self.candidates = images, candidates
        # by (index into self.images, orientation), with their early features (HQ fusion)
        self._embeddings: dict[tuple[int, int], np.ndarray] = {}
        self._early: dict[tuple[int, int], np.ndarray] = {}

    def embeddings(self, index: np.ndarray, orientation: np.ndarray | None = None) -> np.ndarray:
        """(n, C, h, w) embeddings of prepared images, each (image, orientation) computed
        once (frozen encoder; ``orientation`` as :func:`orient` takes it, default 0)."""
        return np.stack([self._embeddings[k] for k in self._embed(index, orientation)])

    def _embed(self, index: np.ndarray, orientation: np.ndarray | None) -> list[tuple[int, int]]:
        """Embed each (image, orientation) not embedded yet; their keys into the caches."""
        turns = np.zeros(len(index), np.int64) if orientation is None else orientation
        keys = [(int(i), int(o)) for i, o in zip(index, turns, strict=True)]
        for key in keys:
            if key not in self._embeddings:
                # As inference embeds: the resized image without the padding (the model pads
                # after normalising), through the predictor's encoder path.
                item = orient(self.images[key[0]], key[1])
                h, w = item.input_size
                pixels = Tensor(item.pixels[None, :, :h, :w].astype(np.float32))
                self.predictor.set_torch_image(pixels, (h, w))
                self._embeddings[key] = self.predictor.get_image_embedding().asnumpy()[0]
                if self.predictor.early_features is not None:
                    self._early[key] = self.predictor.early_features.asnumpy()[0]
        return keys

    def _frozen(self, batch: ObjectBatch) -> Tensor | tuple[Tensor, Tensor]:
        """The batch's frozen-encoder embeddings as a Tensor; with HQ fusion (embeddings,
        early features)."""
        keys = self._embed(batch.image_index, batch.orientation)
        features = Tensor(np.stack([self._embeddings[k] for k in keys]))
        if not self.model.mask_decoder.hq_fusion:
            return features
        early = np.stack([self._early[k] for k in keys])
        return _pair(features, Tensor(early))

    def _round(self, with_encoder: bool, prompts: Prompts, src, owner, gt) -> StepOutput:
        """One forward, backward and update for ``prompts`` (see :class:`TrainingSteps`)."""
        key = RoundKey(
            with_encoder,
            prompts.coords is not None,
            prompts.boxes is not None,
            prompts.mask_input is not None,
            prompts.multimask,
        )
        dummy = Tensor(np.zeros(1, np.float32))
        args = [
            owner,
            Tensor(prompts.coords) if key.has_points else dummy,
            Tensor(prompts.labels) if key.has_points else dummy,
            Tensor(prompts.boxes) if key.has_box else dummy,
            Tensor(prompts.mask_input) if key.has_mask else dummy,
            gt,
        ]
        n = int(owner.shape[0])
        chunk = n if with_encoder else self.mask_chunk(n)
        return self.steps.run(key, src, args, self._focal, chunk)

    def mask_chunk(self, n: int) -> int:
        """Masks per decoder pass for a batch of ``n``: the largest divisor of ``n`` up to
        ``config.mask_chunk`` (or :func:`masks_per_pass`), so every chunk has one shape."""
        limit = max(1, self.config.mask_chunk or masks_per_pass(self.model))
        return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)

    def validate(self) -> dict[str, float]:
        """Mean IoU from one interior point and from each box on the held-out images."""
        kinds = self.config.val_prompts
        ious: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        self.model.set_train(False)
        for item in self.val:
            image, labels = (item.image, item.labels) if hasattr(item, "labels") else item
            for j, kind in enumerate(kinds):
                ious[kind].append(prompt_ious(self.predictor, image, labels, kind, j == 0))
        self.model.set_train(True)
        out: dict[str, float] = {}
        for kind in kinds:
            values = np.concatenate(ious[kind])
            out[f"{kind}_miou"] = float(values.mean()) if values.size else float("nan")
            out["n_objects"] = int(values.size)
        return out

    def save(self, path: str | Path, result: TrainResult | None = None) -> Path:
        """Write the model atomically (with its size config) and a JSON log beside it;
        with ``keep_state``, the resumable state first (removed once the run is complete)."""
        log = (
            None
            if result is None
            else {
                "config": asdict(self.config),
                "model_config": dict(getattr(self.model, "config", {}) or {}),
                "run": self.run_info,
                "steps_done": result.steps_done,
                "cancelled": result.cancelled,
                "validation": result.validation,
                "history": result.history,
            }
        )
        complete = result is not None and result.steps_done >= self.config.steps
        if self.keep_state and log is not None and not complete:
            save_state(state_path(path), self.model, self.optimizer, self.rng, log)
        path = save_checkpoint(self.model, path, config=getattr(self.model, "config", None))
        if self.keep_state and complete:
            state_path(path).unlink(missing_ok=True)
        if log is not None:
            write_json(path.with_suffix(".json"), log, overwrite=True)
        return path

    def _validate_into(self, result: TrainResult, step: int) -> Any:
        figures = {"step": step, **self.validate()}
        result.validation.append(figures)
        recent = result.history[-self.config.val_every or None :]
        loss = np.mean([h["loss"] for h in recent]) if recent else float("nan")
        shown = ", ".join(f"{k} {figures[f'{k}_miou']:.3f}" for k in self.config.val_prompts)
        self._say(
            f"step {step}/{self.config.steps}: train loss {loss:.4f}, held-out mIoU {shown} "
            f"({figures.get('n_objects', 0)} objects)"
        )
        return self._report({"event": "validation", "total": self.config.steps, **figures})

    def _report(self, info: dict[str, Any]) -> Any:
        return None if self.progress is None else self.progress(info)

    def _cancel_requested(self) -> bool:
        c = self.cancel
        if c is None:
            return False
        return bool(c.is_set()) if hasattr(c, "is_set") else bool(c())

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)


def _pair(embeddings: Tensor, early: Tensor):
    """(embeddings, early features) as one graph input that is data, not a constant: a plain
    tuple of Tensors is compiled into the graph as constants, so every step compiled anew
    (about 20 s and 1 GB more each step)."""
    return mutable((embeddings, early))


__all__ = [
    "SamTrainer",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "make_optimizer",
    "encoder_training_problem",
    "MASK_CHUNK_MB",
    "StepOutput",
    "masks_per_pass",
    "reduce_masks",
    "upscale_logits",
    "trainable_parameters",
]
