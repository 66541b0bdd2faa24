"""Train or fine-tune SAM with simulated interactive prompts (the SAM paper's recipe, on CPU).

Each step takes a batch of objects from a few images and runs ``1 + correction_rounds``
rounds: a first prompt (one point, or a jittered box, per batch at random), then rounds
that add one correction click from the error region and feed the previous low-res logits
back as the mask input. Every round is one forward, backward and AdamW update of the
trainable parts, compiled with ``ms.jit`` (one graph per prompt structure, reused).

The model code is the inference code: the prompt encoder and mask decoder cells the
predictor calls. With a frozen image encoder every image is embedded once and the
embedding reused; with a trained encoder the first round goes through it (with random
flips and quarter turns of the image), later rounds reuse that round's embedding.

Progress: ``progress(info)`` is called after every step and every validation with a dict
(``event`` = ``step`` or ``validation``); returning False cancels, as does the ``cancel``
flag (a ``threading.Event`` or a callable returning True). A cancelled run stops after the
current step, saves what it has (when ``out`` is given) and reports ``cancelled=True``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import runtime
from ..predictor import decode_fn
from ..utils.io import write_json
from ..weights.checkpoint import save_checkpoint
from .data import PreparedImages, augment, sample_batch
from .evaluate import CompiledPredictor, prompt_ious
from .losses import DICE_WEIGHT, FOCAL_WEIGHT, IOU_WEIGHT, sam_loss
from .prompts import Prompts, add_correction, initial_prompts

NO_DECAY = (
    "pos_embed",
    "rel_pos",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)

Progress = Callable[[dict[str, Any]], Any]

# Memory budget of one compiled decoder training pass (forward + backward) over a chunk of
# masks; a round keeps one such graph per prompt kind (up to four). Measured on MindSpore
# 2.10 CPU: a graph keeps ~1000 bytes per mask per image-embedding element (tokens x
# channels): ~120 MB per mask for the embedded micro model (32x32x128), ~1 GB for vit_b
# (64x64x256, whose default 16-mask batch could not run in one pass). Smaller chunks cost
# time on small models (micro: 4 masks per pass took twice as long per step as 16).
MASK_CHUNK_MB = 2048
BYTES_PER_MASK_ELEMENT = 1000
# Training the image encoder on CPU: the largest encoder size (tokens x width x depth)
# allowed. The micro model (32x32 tokens x 192 x 6 = 1.2 M) trains in ~14 GB with all its
# graphs; vit_b (64x64 x 768 x 12 = 38 M) was killed at 24.4 GB in its first round (2
# images, 16 masks), which inside napari would take the viewer down with it.
CPU_ENCODER_TRAINING_LIMIT = 8_000_000


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
    augment: bool = True  # flips/turns when the encoder is trained
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


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * t))


def focal_weight_at(step: int, config: TrainConfig) -> float:
    """The focal weight of a step (linear ramp over ``focal_warmup`` steps)."""
    if config.focal_warmup <= 0:
        return config.focal_weight
    return config.focal_weight * min(1.0, step / config.focal_warmup)


def trainable_parameters(model, train_encoder: bool, train_prompt_encoder: bool) -> list:
    """The parameters a run updates: the mask decoder, optionally the prompt and image
    encoders (buffers such as the positional-encoding matrix are never trained)."""
    parts = [model.mask_decoder]
    if train_prompt_encoder:
        parts.append(model.prompt_encoder)
    if train_encoder:
        parts.append(model.image_encoder)
    return [p for part in parts for p in part.trainable_params()]


def make_optimizer(params: list, config: TrainConfig) -> nn.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and positional tables."""
    decay = [p for p in params if p.ndim >= 2 and not any(n in p.name for n in NO_DECAY)]
    rest = [p for p in params if all(p is not q for q in decay)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    lr = Tensor(np.float32(lr_at(0, config)))
    return nn.AdamWeightDecay(groups, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8)


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
        self._steps: dict[tuple, Callable] = {}
        self._grads: dict[tuple, Callable] = {}  # chunked rounds: gradients only
        self._apply = _maybe_jit(self._update_fn(), cfg.jit)  # chunked rounds: clip + update
        self._predictor: CompiledPredictor | None = None
        self.rng = np.random.default_rng(cfg.seed)
        self.loss_size = cfg.loss_size or model.prompt_encoder.mask_input_size[0]
        self._focal = Tensor(np.float32(cfg.focal_weight))

    # ----------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train for ``config.steps`` steps (or until cancelled), validate, save."""
        cfg = self.config
        result = TrainResult()
        start = time.perf_counter()
        self.model.set_train(True)
        try:
            if self.val is not None and cfg.val_at_start:
                if self._validate_into(result, 0) is False:
                    result.cancelled = True
            for step in range(0 if result.cancelled else cfg.steps):
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
        transform = augment if (cfg.train_encoder and cfg.augment) else None
        batch = sample_batch(
            self.images,
            self.candidates,
            self.rng,
            cfg.batch_images,
            cfg.objects_per_image,
            transform,
        )
        gt = Tensor(reduce_masks(batch.masks, self.loss_size))
        self._focal = Tensor(np.float32(focal_weight_at(step, cfg)))
        owner = Tensor(batch.owner)
        prompts = initial_prompts(batch.masks, self.rng, self.rng.random() < cfg.box_prob)
        embeddings = None if cfg.train_encoder else Tensor(self.embeddings(batch.image_index))
        metrics: dict[str, float] = {"step": step + 1, "lr": lr}
        for r in range(1 + cfg.correction_rounds):
            with_encoder = cfg.train_encoder and r == 0
            src = Tensor(batch.pixels) if with_encoder else embeddings
            out = self._round(with_encoder, prompts, src, owner, gt)
            loss, iou, best, low_res = out[0], out[4], out[5], out[6]
            if with_encoder:
                embeddings = out[8]
            best = best.asnumpy()
            rows = np.arange(len(best))
            metrics[f"loss{r}"] = float(loss.asnumpy())
            metrics[f"iou{r}"] = float(iou.asnumpy()[rows, best].mean())
            if r < cfg.correction_rounds:
                logits = low_res.asnumpy()[rows, best]
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
        self._embeddings: dict[int, np.ndarray] = {}  # by index into self.images

    def embeddings(self, index: np.ndarray) -> np.ndarray:
        """(n, C, h, w) embeddings of prepared images, each computed once (frozen encoder)."""
        for i in index:
            i = int(i)
            if i not in self._embeddings:
                # As inference embeds: the resized image without the padding (the model pads
                # after normalising), through the predictor's encoder path (on CPU shared
                # stage graphs, faster than one whole-encoder graph, which exhausts memory
                # for vit_b/l/h).
                item = self.images[i]
                h, w = item.input_size
                pixels = Tensor(item.pixels[None, :, :h, :w].astype(np.float32))
                self.predictor.set_torch_image(pixels, (h, w))
                self._embeddings[i] = self.predictor.get_image_embedding().asnumpy()[0]
        return np.stack([self._embeddings[int(i)] for i in index])

    def _round(self, with_encoder: bool, prompts: Prompts, src, owner, gt) -> tuple:
        key = (
            with_encoder,
            prompts.coords is not None,
            prompts.boxes is not None,
            prompts.mask_input is not None,
            prompts.multimask,
        )
        dummy = Tensor(np.zeros(1, np.float32))
        args = [
            owner,
            Tensor(prompts.coords) if key[1] else dummy,
            Tensor(prompts.labels) if key[1] else dummy,
            Tensor(prompts.boxes) if key[2] else dummy,
            Tensor(prompts.mask_input) if key[3] else dummy,
            gt,
        ]
        n = int(owner.shape[0])
        chunk = n if with_encoder else self.mask_chunk(n)
        if chunk >= n:
            if key not in self._steps:
                self._steps[key] = self._make_step(*key)
            return self._steps[key](src, *args, self._focal)
        return self._chunked_round(key, src, args, n, chunk)

    def mask_chunk(self, n: int) -> int:
        """Masks per decoder pass for a batch of ``n``: the largest divisor of ``n`` up to
        ``config.mask_chunk`` (or :func:`masks_per_pass`), so every chunk has one shape."""
        limit = max(1, self.config.mask_chunk or masks_per_pass(self.model))
        return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)

    def _chunked_round(self, key: tuple, src, args: list, n: int, chunk: int) -> tuple:
        """One update from the summed gradients of ``n / chunk`` decoder passes (each
        weighted by its share, so the update equals one pass over all ``n`` masks)."""
        if key not in self._grads:
            forward = self._forward_fn(*key)
            params = self.optimizer.parameters
            grad_fn = ms.value_and_grad(forward, None, params, has_aux=True)
            self._grads[key] = _maybe_jit(grad_fn, self.config.jit)
        total, outs = None, []
        for start in range(0, n, chunk):
            part = [a[start : start + chunk] if a.shape[0] == n else a for a in args]
            out, grads = self._grads[key](src, *part, self._focal)
            total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
            outs.append(out)
        share = chunk / n  # every chunk's loss is a mean over its masks: weight them equally
        self._apply(tuple(g * share for g in total))
        scalars = (np.mean([o[k].asnumpy() for o in outs], dtype=np.float32) for k in range(4))
        rows = (np.concatenate([o[k].asnumpy() for o in outs]) for k in range(4, len(outs[0])))
        return tuple(Tensor(v) for v in (*scalars, *rows))

    def _update_fn(self) -> Callable:
        optimizer, clip = self.optimizer, self.config.grad_clip

        def update(grads):
            if clip > 0:
                grads = ops.clip_by_global_norm(grads, clip)
            return optimizer(grads)

        return update

    def _make_step(
        self, with_encoder: bool, has_points: bool, has_box: bool, has_mask: bool, multimask: bool
    ) -> Callable:
        forward = self._forward_fn(with_encoder, has_points, has_box, has_mask, multimask)
        grad_fn = ms.value_and_grad(forward, None, self.optimizer.parameters, has_aux=True)
        update = self._update_fn()

        def step(*args):
            out, grads = grad_fn(*args)
            update(grads)
            return out

        return _maybe_jit(step, self.config.jit)

    def _forward_fn(
        self, with_encoder: bool, has_points: bool, has_box: bool, has_mask: bool, multimask: bool
    ) -> Callable:
        """The loss of one round and its outputs (the first is differentiated)."""
        model, cfg = self.model, self.config
        dice_w, iou_w, alpha = cfg.dice_weight, cfg.iou_weight, cfg.focal_alpha
        decode = decode_fn(model, has_points, has_box, has_mask, multimask)

        def forward(src, owner, coords, labels, boxes, mask_input, gt, focal_w):
            emb = model.image_encoder(model.preprocess(src)) if with_encoder else src
            feats = ops.gather(emb, owner, 0)
            low_res, iou_pred = decode(feats, coords, labels, boxes, mask_input)
            total, focal, dice, iou_mse, iou, best = sam_loss(
                low_res, iou_pred, gt, focal_w, dice_w, iou_w, alpha
            )
            out = (
                total,
                focal,
                dice,
                iou_mse,
                iou,
                best,
                ops.stop_gradient(low_res),
                ops.stop_gradient(iou_pred),
            )
            if with_encoder:
                out = out + (ops.stop_gradient(emb),)
            return out

        return forward

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
        """Write the model atomically (with its size config) and a JSON log beside it."""
        path = save_checkpoint(self.model, path, config=getattr(self.model, "config", None))
        if result is not None:
            log = {
                "config": asdict(self.config),
                "model_config": dict(getattr(self.model, "config", {}) or {}),
                "steps_done": result.steps_done,
                "cancelled": result.cancelled,
                "validation": result.validation,
                "history": result.history,
            }
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


def reduce_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(B, S, S) bool -> (B, size, size) float32 fraction of each cell inside the mask
    (S must be a multiple of size)."""
    b, s, _ = masks.shape
    if s == size:
        return masks.astype(np.float32)
    if s % size:
        raise ValueError(f"loss_size {size} must divide the input size {s}")
    f = s // size
    return masks.reshape(b, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)


def upscale_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) logits -> (B, size, size), bilinear with pixel centres aligned as
    ``ops.interpolate(..., align_corners=False)``."""
    return np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR) for x in logits])


def encoder_training_problem(model, limit: int | None = None) -> str | None:
    """Why the image encoder of ``model`` cannot be trained on CPU (None: it can); ``limit``
    defaults to :data:`CPU_ENCODER_TRAINING_LIMIT`."""
    limit = CPU_ENCODER_TRAINING_LIMIT if limit is None else limit
    h, w = model.prompt_encoder.image_embedding_size
    blocks = list(model.image_encoder.blocks)
    size = h * w * blocks[0].kind["dim"] * len(blocks) if blocks else 0
    if size <= limit:
        return None
    return (
        f"training the image encoder of this model ({len(blocks)} blocks on a {h}x{w} token "
        "grid, e.g. SAM ViT-B/L/H) needs more memory than a CPU machine has (vit_b was "
        "stopped at 24 GB): leave the image encoder frozen (untick 'Train image encoder', "
        "or drop --train-encoder); the prompt encoder and mask decoder are still trained"
    )


def masks_per_pass(model, budget_mb: float = MASK_CHUNK_MB) -> int:
    """How many masks one decoder training pass may take within ``budget_mb`` (at least 1),
    from the size of the model's image embedding (see :data:`MASK_CHUNK_MB`)."""
    pe = model.prompt_encoder
    h, w = pe.image_embedding_size
    per_mask = BYTES_PER_MASK_ELEMENT * h * w * pe.embed_dim
    return max(1, int(budget_mb * 2**20 // per_mask))


def _maybe_jit(fn: Callable, enable: bool) -> Callable:
    return ms.jit(fn) if enable else fn


__all__ = [
    "SamTrainer",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "make_optimizer",
    "encoder_training_problem",
    "masks_per_pass",
    "trainable_parameters",
]
