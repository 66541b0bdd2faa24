"""The "Fine-tune SAM" dock widget: train a model on your images and their Labels layers.

Choose the model to start from, one or more pairs of an Image layer and the Labels layer
drawn on it, the number of steps and where to save, and press Start. Every 2D plane of the
labels that has objects is one training image; the image plane goes through the layer's
contrast limits, as the other widgets show it to SAM. Loading and training run in a worker:
the progress bar follows the steps, the log shows the held-out validation figures, Cancel
stops after the current step and saves what was learned. The checkpoint loads in the other
widgets (choose it as "Checkpoint").
"""

from __future__ import annotations

import contextlib
import threading
from functools import partial
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, Signal

from napari_sam_ms.utils.image import to_rgb_uint8

from .common import Notifier, image_layers, labels_layers
from .image_target import TargetError, _contrast_limits, check_layer
from .model_choice import ModelChoice, ModelHolder
from .workers import Cancelled, TaskRunner

DEFAULT_OUT = Path.home() / "napari-sam-ms" / "finetuned.ckpt"
NO_PAIR = (
    "No training data: choose an Image layer and the Labels layer with its objects (0 = "
    "background, one id per object; e.g. corrected results of the other widgets), or add "
    "pairs with 'Add pair'."
)
Pair = tuple[Image, Labels]


class SetupError(ValueError):
    """Training cannot start as set up; the message says what to do."""


# ------------------------------------------------------------------ data (no Qt)
def _level0(layer: Any) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def check_pair(image: Image, labels: Labels) -> None:
    """Refuse a pair whose image cannot be read or whose planes do not match the labels."""
    try:
        check_layer(image)
    except TargetError as exc:
        raise SetupError(str(exc)) from exc
    img, lab = _level0(image), _level0(labels)
    spatial = tuple(img.shape[:-1] if image.rgb else img.shape)
    if spatial != tuple(lab.shape):
        raise SetupError(
            f"Image '{image.name}' has shape {spatial} but Labels '{labels.name}' has shape "
            f"{tuple(lab.shape)}: a pair must cover the same pixels. Pick the labels drawn on "
            "this image, or make them on it (select the image, then Layer > New Labels Layer)."
        )


def training_planes(image: Image, labels: Labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(H, W, 3) uint8 image planes and (H, W) label planes, one per labelled plane.

    The last two axes are the plane; leading axes (z, t...) are iterated and planes without
    labels skipped. The first level of multiscale layers is used.
    """
    check_pair(image, labels)
    img, lab = _level0(image), _level0(labels)
    images, planes = [], []
    for index in np.ndindex(*lab.shape[:-2]):
        plane = np.array(lab[index])  # copies: painting during training changes nothing
        if not plane.any():
            continue
        pixels = np.array(img[index])
        try:
            rgb = to_rgb_uint8(pixels, _contrast_limits(image, pixels))
        except ValueError as exc:
            raise SetupError(f"Cannot train on '{image.name}': {exc}") from exc
        images.append(rgb)
        planes.append(plane)
    if not planes:
        raise SetupError(
            f"Labels '{labels.name}' has no objects: paint some (one id per object) or pick "
            "another Labels layer."
        )
    return images, planes


def output_path(value: Any, overwrite: bool) -> Path:
    """The checkpoint to write, refused (with what to do) when it cannot or may not be."""
    from napari_sam_ms.training.finetune import output_problem

    text = str(value or "").strip()
    if text in ("", "."):
        raise SetupError("Choose where to save the fine-tuned model under 'Save as' (.ckpt).")
    path = Path(text).expanduser()
    problem = output_problem(path, overwrite, how="tick 'Overwrite'")
    if problem is not None:
        raise SetupError(f"{problem[0].upper()}{problem[1:]} (under 'Save as').")
    return path


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _figures(entry: dict[str, Any]) -> str:
    kinds = [k for k in ("point", "box") if f"{k}_miou" in entry]
    return ", ".join(f"{k} {entry[f'{k}_miou']:.3f}" for k in kinds)


# ------------------------------------------------------------------ widget
class _Relay(QObject):
    """Carries steps and log lines from the worker thread to the UI thread (queued)."""

    stepped = Signal(int, int)
    logged = Signal(str)


class FinetuneWidget(Container):
    """Fine-tune SAM's prompt encoder and mask decoder (optionally its image encoder)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._holder = ModelHolder()
        self._notify = Notifier()
        self._runner = TaskRunner(on_busy=self._on_busy)
        self._relay = _Relay()
        self._relay.stepped.connect(self._on_step)
        self._relay.logged.connect(self._append_log)
        self._stop = threading.Event()
        self._pairs: list[Pair] = []
        self._lines: list[str] = []
        # Further TrainConfig fields for fine_tune (batch_images, correction_rounds...).
        self.extra_settings: dict[str, Any] = {}
        super().__init__(widgets=self._build_controls(), labels=True)
        for event in ("inserted", "removed", "moved"):
            getattr(viewer.layers.events, event).connect(self._on_layers_changed)
        self.native.destroyed.connect(lambda *_: self._teardown())

    def _teardown(self) -> None:
        """The dock widget is gone: stop training (it saves) and let go of the viewer."""
        self._stop.set()
        self._runner.shutdown()
        for event in ("inserted", "removed", "moved"):
            with contextlib.suppress(TypeError, ValueError):
                getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)

    # ------------------------------------------------------------------ controls
    def _build_controls(self) -> list:
        viewer = self._viewer
        self._model = ModelChoice(self._holder)
        self._model.tooltip = "The model to start from; the checkpoint saved has its size."
        self._image = ComboBox(
            name="image_layer",
            label="Image",
            choices=lambda _w: image_layers(viewer),
            tooltip="An image to train on. For stacks, every plane with labels is used.",
        )
        self._labels_choice = ComboBox(
            name="labels_layer",
            label="Labels",
            choices=lambda _w: labels_layers(viewer),
            tooltip="Its objects: one id per object, 0 = background, same shape as the image.",
        )
        self._add_btn = PushButton(name="add_pair_button", text="Add pair")
        self._add_btn.tooltip = "Train on this Image + Labels pair as well as the ones listed."
        self._clear_btn = PushButton(name="clear_pairs_button", text="Clear pairs")
        self._pairs_label = Label(name="pairs", label="Training data")
        self._steps = SpinBox(
            name="steps",
            label="Steps",
            value=200,
            min=1,
            max=100_000,
            tooltip="Training steps; each takes a few objects from one or two images.",
        )
        self._lr = FloatSpinBox(
            name="learning_rate",
            label="Learning rate",
            value=1e-4,
            min=1e-5,
            max=1e-2,
            step=1e-5,
            tooltip="Peak learning rate (warm-up, then cosine decay). 1e-4 suits official "
            "weights; higher changes the model faster and may forget more.",
        )
        self._encoder = CheckBox(
            name="train_encoder",
            text="Train image encoder too (slower)",
            value=False,
            tooltip="Off: the prompt encoder and mask decoder are trained and each image is "
            "embedded once. On: the image encoder is trained as well; much slower on a CPU, "
            "where only small models (such as micro) can: vit_b/l/h need more memory.",
        )
        self._held_out = FloatSpinBox(
            name="held_out",
            label="Held out",
            value=0.2,
            min=0.0,
            max=0.9,
            step=0.05,
            tooltip="Share of the images (three or more) or of the objects of each image kept "
            "out of training to measure the model (mIoU from a point and from a box). 0 = none.",
        )
        self._out = FileEdit(
            name="output_file",
            label="Save as",
            mode="w",
            filter="SAM checkpoint (*.ckpt)",
            value=DEFAULT_OUT,
            tooltip="Where the fine-tuned model is written (.ckpt, with a .json training log "
            "beside it).",
        )
        self._overwrite = CheckBox(
            name="overwrite", text="Overwrite", value=False, tooltip="Replace an existing file."
        )
        self._start_btn = PushButton(name="start_button", text="Start")
        self._cancel_btn = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self._cancel_btn.tooltip = "Stop after the current step and save what was learned."
        self._progress = ProgressBar(name="progress", label="Progress", value=0, min=0, max=200)
        self._status = Label(name="status", label="Status", value="Ready")
        self._log = TextEdit(name="log", label="Log", value="")
        self._log.read_only = True
        self._log.min_height = 200
        self._add_btn.changed.connect(self.add_pair)
        self._clear_btn.changed.connect(self.clear_pairs)
        self._start_btn.changed.connect(self.start)
        self._cancel_btn.changed.connect(self.cancel)
        self._show_pairs()
        pair_buttons = Container(
            name="pair_buttons",
            widgets=[self._add_btn, self._clear_btn],
            layout="horizontal",
            labels=False,
        )
        run_buttons = Container(
            name="run_buttons",
            widgets=[self._start_btn, self._cancel_btn],
            layout="horizontal",
            labels=False,
        )
        pair_buttons.label = run_buttons.label = ""  # named for tests, shown without a label
        return [
            self._model,
            self._image,
            self._labels_choice,
            pair_buttons,
            self._pairs_label,
            self._steps,
            self._lr,
            self._encoder,
            self._held_out,
            self._out,
            self._overwrite,
            run_buttons,
            self._progress,
            self._status,
            self._log,
        ]

    @property
    def log_text(self) -> str:
        """The log as shown."""
        return str(self._log.value)

    # ------------------------------------------------------------------ pairs
    def add_pair(self) -> None:
        """Add the chosen Image + Labels to the training data."""
        image, labels = self._image.value, self._labels_choice.value
        try:
            if image is None or labels is None:
                raise SetupError(NO_PAIR)
            check_pair(image, labels)
        except SetupError as exc:
            self._notify.error(str(exc))
            return
        if not any(i is image and lab is labels for i, lab in self._pairs):
            self._pairs.append((image, labels))
        self._show_pairs()

    def clear_pairs(self) -> None:
        """Forget the added pairs (Start then uses the pair chosen above)."""
        self._pairs.clear()
        self._show_pairs()

    def training_pairs(self) -> list[Pair]:
        """The added pairs, or the chosen Image + Labels when none were added."""
        if self._pairs:
            return list(self._pairs)
        image, labels = self._image.value, self._labels_choice.value
        if image is None or labels is None:
            raise SetupError(NO_PAIR)
        return [(image, labels)]

    def _show_pairs(self) -> None:
        if self._pairs:
            text = "\n".join(f"{i.name}  +  {lab.name}" for i, lab in self._pairs)
        else:
            text = "the Image + Labels above (or add pairs)"
        self._pairs_label.value = text

    def _on_layers_changed(self, event: Any = None) -> None:
        layers = self._viewer.layers
        self._pairs = [(i, lab) for i, lab in self._pairs if i in layers and lab in layers]
        self._show_pairs()
        self.reset_choices()

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Check the setup, then load the model and train in a worker."""
        if self._runner.busy:
            self._notify.warning("Fine-tuning is already running: Cancel it first.")
            return
        try:
            images, labels, names = [], [], []
            for image, lab in self.training_pairs():
                planes = training_planes(image, lab)
                images += planes[0]
                labels += planes[1]
                names.append(f"'{image.name}' + '{lab.name}' ({_count(len(planes[0]), 'plane')})")
            out = output_path(self._out.value, bool(self._overwrite.value))
        except SetupError as exc:
            self._notify.error(str(exc))
            self._status.value = "Not started (see notification)"
            return
        settings = dict(
            steps=int(self._steps.value),
            lr=float(self._lr.value),
            train_encoder=bool(self._encoder.value),
            val_fraction=float(self._held_out.value),
            **self.extra_settings,
        )
        choice = (self._holder.model_type, self._holder.checkpoint)
        self._stop.clear()
        self._lines = []
        self._log.value = ""
        self._progress.max = settings["steps"]
        self._progress.value = 0
        self._append_log(f"Training data: {', '.join(names)}.")
        self._runner.submit(
            partial(self._train_job, choice, images, labels, out, settings),
            on_done=partial(self._on_done, choice, settings["steps"]),
            on_error=self._on_error,
            on_cancel=self._on_cancelled,
            desc="SAM: fine-tuning",
        )

    def cancel(self) -> None:
        """Stop after the current step; the model trained so far is saved."""
        if self._runner.busy:
            self._stop.set()
            self._status.value = "Cancelling after the current step..."

    def _train_job(
        self,
        choice: tuple[str, str | None],
        images: list[np.ndarray],
        labels: list[np.ndarray],
        out: Path,
        settings: dict[str, Any],
        report,
    ) -> Any:
        """Worker side: build a fresh model (training changes it), then fine-tune it."""
        from napari_sam_ms.training.finetune import fine_tune

        relay, stop = self._relay, self._stop
        model_type, checkpoint = choice
        source = f" from {checkpoint}" if checkpoint else ""
        relay.logged.emit(f"Loading {model_type}{source}...")
        loaded = ModelHolder(model_type, checkpoint).get()
        if loaded.note:
            relay.logged.emit(f"Note: {loaded.note}.")
        if stop.is_set():
            raise Cancelled()
        steps, planes = _count(settings["steps"], "step"), _count(len(images), "image")
        relay.logged.emit(f"Training {steps} on {planes}...")

        def progress(info: dict[str, Any]) -> bool:
            step, total = int(info["step"]), int(info["total"])
            if info["event"] == "step":
                relay.stepped.emit(step, total)
            return bool(report(step, total)) and not stop.is_set()

        return fine_tune(
            loaded.model,
            images,
            labels,
            out=out,
            progress=progress,
            cancel=stop,
            log=relay.logged.emit,
            **settings,
        )

    def _on_step(self, step: int, total: int) -> None:
        self._progress.max = total
        self._progress.value = step
        if not self._stop.is_set():
            self._status.value = f"Step {step} of {total}"

    def _append_log(self, line: str) -> None:
        self._lines.append(line)
        self._log.value = "\n".join(self._lines)
        bar = self._log.native.verticalScrollBar()
        bar.setValue(bar.maximum())  # keep the newest line in view

    def _on_done(self, choice: tuple[str, str | None], steps: int, result: Any) -> None:
        self._progress.value = result.steps_done
        if result.checkpoint is None:
            message = "Fine-tuning cancelled before the first step: nothing was saved."
            self._status.value = "Cancelled: nothing saved"
        else:
            use = (
                f"To use it, choose this file as 'Checkpoint' (Model: {choice[0]}) in 'Segment "
                "with prompts' or 'Automatic segmentation'."
            )
            if len(result.validation) >= 2:
                first, last = result.validation[0], result.validation[-1]
                use = f"Held-out mIoU: {_figures(first)} before, {_figures(last)} after. " + use
            if result.cancelled:
                message = (
                    f"Fine-tuning cancelled after {result.steps_done} of {steps} steps; the "
                    f"model trained so far is saved to {result.checkpoint}. {use}"
                )
                self._status.value = f"Cancelled: {_count(result.steps_done, 'step')} saved"
            else:
                message = (
                    f"Fine-tuned model saved to {result.checkpoint} ({result.steps_done} "
                    f"steps). {use}"
                )
                self._status.value = f"Done: saved {result.checkpoint.name}"
        self._append_log(message)
        self._notify.info(message)

    def _on_error(self, exc: BaseException) -> None:
        self._notify.job_error(exc)
        self._append_log(f"Failed: {exc}")
        self._status.value = "Failed (see notification)"

    def _on_cancelled(self) -> None:
        message = "Fine-tuning cancelled before training started: nothing was saved."
        self._append_log(message)
        self._status.value = "Cancelled: nothing saved"

    def _on_busy(self, busy: bool) -> None:
        self._start_btn.enabled = not busy
        self._cancel_btn.enabled = busy
        if busy:
            self._status.value = "Loading model and preparing images..."


__all__ = ["FinetuneWidget", "SetupError", "check_pair", "output_path", "training_planes"]
