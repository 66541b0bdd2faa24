"""The "Fine-tune SAM" dock widget: train a model on your images and their Labels layers.

Choose the model to start from, one or more pairs of an Image layer and the Labels layer
drawn on it (see :mod:`.finetune_data`), the number of steps and where to save, and press
Start. Loading and training run in a worker: the progress bar follows the steps, the log
shows the held-out validation figures, Cancel stops after the current step and saves what
was learned. The checkpoint loads in the other widgets (choose it as "Checkpoint").
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

from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.progress import Cancelled
from napari_sam_ms.training.finetune import fine_tune

from .common import Notifier, button_row, image_layers, labels_layers
from .finetune_data import (
    NO_PAIR,
    SetupError,
    check_pair,
    count,
    figures,
    output_path,
    training_planes,
)
from .model_choice import ModelChoice
from .workers import TaskRunner

DEFAULT_OUT = Path.home() / "napari-sam-ms" / "finetuned.ckpt"
Pair = tuple[Image, Labels]


# ------------------------------------------------------------------ widget
class _Relay(QObject):
    """Carries steps and log lines from the worker thread to the UI thread (queued)."""

    stepped = Signal(int, int)
    logged = Signal(str)


class FinetuneWidget(Container):
    """Fine-tune SAM's prompt encoder and mask decoder (optionally its image encoder).

    Args:
        viewer: the napari viewer.
        holder: the model holder (default: a new :class:`ModelHolder`; tests may pass one
            with a fake loader). Every run starts from a fresh copy of its choice.
    """

    def __init__(self, viewer: napari.viewer.Viewer, holder: ModelHolder | None = None) -> None:
        self._viewer = viewer
        self._holder = holder if holder is not None else ModelHolder()
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
        """Every control, top to bottom: data, training settings, run and report."""
        self._model = ModelChoice(self._holder)
        self._model.tooltip = "The model to start from; the checkpoint saved has its size."
        return [
            self._model,
            *self._data_controls(),
            *self._setting_controls(),
            *self._run_controls(),
        ]

    def _data_controls(self) -> list:
        """Image and Labels choices, the pair buttons and the list of pairs."""
        viewer = self._viewer
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
        self._add_btn.changed.connect(self.add_pair)
        self._clear_btn.changed.connect(self.clear_pairs)
        self._show_pairs()
        buttons = button_row("pair_buttons", self._add_btn, self._clear_btn)
        return [self._image, self._labels_choice, buttons, self._pairs_label]

    def _setting_controls(self) -> list:
        """Steps, learning rate, encoder training, held-out share and the output file."""
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
        return [self._steps, self._lr, self._encoder, self._held_out, self._out, self._overwrite]

    def _run_controls(self) -> list:
        """Start and Cancel, the progress bar, the status line and the log."""
        self._start_btn = PushButton(name="start_button", text="Start")
        self._cancel_btn = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self._cancel_btn.tooltip = "Stop after the current step and save what was learned."
        self._progress = ProgressBar(name="progress", label="Progress", value=0, min=0, max=200)
        self._status = Label(name="status", label="Status", value="Ready")
        self._log = TextEdit(name="log", label="Log", value="")
        self._log.read_only = True
        self._log.min_height = 200
        self._start_btn.changed.connect(self.start)
        self._cancel_btn.changed.connect(self.cancel)
        buttons = button_row("run_buttons", self._start_btn, self._cancel_btn)
        return [buttons, self._progress, self._status, self._log]

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
                names.append(f"'{image.name}' + '{lab.name}' ({count(len(planes[0]), 'plane')})")
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
        choice = self._holder.choice
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
        choice: tuple[str | None, str | None],
        images: list[np.ndarray],
        labels: list[np.ndarray],
        out: Path,
        settings: dict[str, Any],
        report,
    ) -> Any:
        """Worker side: build a fresh model (training changes it), then fine-tune it."""
        relay, stop = self._relay, self._stop
        model_type, checkpoint = choice
        source = f" from {checkpoint}" if checkpoint else ""
        relay.logged.emit(f"Loading {model_type}{source}...")
        loaded = self._holder.load_fresh(choice)
        if loaded.note:
            relay.logged.emit(f"Note: {loaded.note}.")
        if stop.is_set():
            raise Cancelled()
        steps, planes = count(settings["steps"], "step"), count(len(images), "image")
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

    def _on_done(self, choice: tuple[str | None, str | None], steps: int, result: Any) -> None:
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
                use = f"Held-out mIoU: {figures(first)} before, {figures(last)} after. " + use
            if result.cancelled:
                message = (
                    f"Fine-tuning cancelled after {result.steps_done} of {steps} steps; the "
                    f"model trained so far is saved to {result.checkpoint}. {use}"
                )
                self._status.value = f"Cancelled: {count(result.steps_done, 'step')} saved"
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


__all__ = ["FinetuneWidget"]
