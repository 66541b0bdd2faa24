"""The "Automatic segmentation" dock widget: SAM's whole-image mode with live filters.

Run prompts SAM with a grid of points in a worker (progress bar, Cancel) and keeps every
candidate mask; the filter sliders (predicted IoU, stability, box/crop NMS, min area)
then re-filter those candidates without calling the model, so their effect shows at once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from functools import partial
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from napari_sam_ms.amg_hints import no_objects_hint
from napari_sam_ms.amg_refine import Candidates, refilter, refilter_labels
from napari_sam_ms.amg_settings import (
    META_DEFAULTS,
    SETTINGS,
    default_text,
    help_text,
    model_defaults,
    names,
)
from napari_sam_ms.automatic_mask_generator import collect_candidates
from napari_sam_ms.embedding_cache import EmbeddingCache, image_key
from napari_sam_ms.interaction import ModelHolder
from napari_sam_ms.mirror_average import MirrorAveragedPredictor
from napari_sam_ms.predictor import SamPredictor
from napari_sam_ms.tiled import TiledPredictor
from napari_sam_ms.utils.image import looks_dark_on_bright
from napari_sam_ms.utils.paint import paint_labels
from napari_sam_ms.weights import DEFAULT_EMBEDDED

from .auto_volume import VolumeAction
from .common import NO_IMAGE, SLOW_PHASES, Notifier, PhaseStatus, image_layer_choice, keep_active
from .image_target import (
    MAX_SIDE,
    ImageTarget,
    LayerSources,
    TargetError,
    full_plane_shape,
    resolve_chosen,
    resolve_target,
)
from .labels_edit import PlaneView, new_label_data
from .model_choice import ModelChoice
from .tile_controls import TileControls
from .workers import TaskRunner

REFILTER_MS = 40
POLARITY_SIDE = 1024  # polarity is judged on a plane of at most this many pixels a side
RUN_NAMES = names("run", exposed=True)
FILTER_NAMES = names("filter", exposed=True)
_AFTER = {
    "run": " Takes effect on the next Run.",
    "filter": " Changing it re-filters the last run at once (no model call).",
}


def tooltip(name: str) -> str:
    """A control's tooltip: the table's help text, the defaults and when it applies."""
    default = f" Default: {default_text(name, DEFAULT_EMBEDDED)}."
    return help_text(name) + default + _AFTER[SETTINGS[name].stage]


def make_control(name: str) -> Any:
    """The control of one setting, with the table's range, step and Meta's default."""
    s = SETTINGS[name]
    if s.kind is bool:
        return CheckBox(value=s.default)
    if s.kind is int:
        return SpinBox(value=s.default, min=s.minimum, max=s.maximum, step=s.step)
    kind = FloatSlider if s.stage == "filter" else FloatSpinBox
    return kind(value=s.default, min=s.minimum, max=s.maximum, step=s.step)


TOOLTIPS = {name: tooltip(name) for name in RUN_NAMES + FILTER_NAMES}


class AutoWidget(Container):
    """Whole-image segmentation with Meta's parameters as controls."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        holder: ModelHolder | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self._viewer = viewer
        self.max_side = MAX_SIDE  # finest multiscale level whose plane fits this is used
        self._holder = holder if holder is not None else ModelHolder()
        self._cache = cache if cache is not None else EmbeddingCache()  # tile embeddings
        self._sources = LayerSources()
        self._notify = Notifier()
        self._runner = TaskRunner(on_busy=self._on_busy)
        self._candidates: Candidates | None = None
        self._target: ImageTarget | None = None
        self._layer: Labels | None = None
        self._memo: OrderedDict[tuple, Candidates] = OrderedDict()  # worker side only
        self._dark_on_bright = False  # the chosen image's polarity (suggests 'invert')
        self._adding = False  # adding our own layer: its selection changes are not the user's
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFILTER_MS)
        self._timer.timeout.connect(self.refilter)
        super().__init__(widgets=self._build_controls(), labels=True)
        self._phase = PhaseStatus(self._holder, self._status, self._runner, SLOW_PHASES)
        self._volume = VolumeAction(  # its status(text) sets the status line
            viewer, self._runner, self._holder, self._cache, self._notify,
            partial(setattr, self._status, "value"), self._tiles.choose,
        )  # fmt: skip
        for event in ("inserted", "removed", "moved"):
            getattr(viewer.layers.events, event).connect(self._on_layers_changed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._image.changed.connect(self._on_image_chosen)
        self.native.destroyed.connect(lambda *_: self._teardown())
        if self._image.value is not None:
            self._on_image_chosen()

    def _teardown(self) -> None:
        """The dock widget is gone: stop timers and work, let go of the viewer's events."""
        with contextlib.suppress(RuntimeError):  # Qt may have deleted it already
            self._timer.stop()
        self._runner.shutdown()
        self._candidates = None
        for event in ("inserted", "removed", "moved"):
            getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)
        self._viewer.layers.selection.events.active.disconnect(self._on_active_layer)

    # ------------------------------------------------------------------ controls
    def _build_controls(self) -> list:
        self._image = image_layer_choice(self._viewer)
        self._model = ModelChoice(self._holder)
        self._model.chosen.connect(self._on_model_chosen)
        self._tiles = TileControls(self._holder, self._sizing_labels, self._on_run_setting_changed)
        self._model.chosen.connect(self._tiles.refresh)
        self._run_controls = {name: make_control(name) for name in RUN_NAMES}
        self._filter_controls = {name: make_control(name) for name in FILTER_NAMES}
        for name, w in {**self._run_controls, **self._filter_controls}.items():
            w.name, w.label, w.tooltip = name, name.replace("_", " "), TOOLTIPS[name]
        # a checkbox shows its text, not the form label
        self._run_controls["mirror_average"].text = "mirror average (ours; ~4x slower)"
        invert = self._run_controls["invert"]
        invert.text = "invert (model input only; ours)"
        invert.tooltip += " Ticked for you when the chosen image looks dark on bright."
        self.reset_defaults()
        for w in self._filter_controls.values():
            w.changed.connect(self._schedule_refilter)
        for w in self._run_controls.values():
            w.changed.connect(self._on_run_setting_changed)
        self._run_btn = PushButton(name="run_button", text="Run")
        self._run_btn.tooltip = (
            "Segment the shown slice. The result goes to 'SAM auto (<image>)', which every Run "
            "and filter change rewrites: rename that layer to keep a result."
        )
        self._volume_btn = PushButton(name="volume_button", text="Segment volume")
        self._volume_btn.tooltip = "Every slice of the z-stack, linked into 3D objects (new layer)"
        self._cancel_btn = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self._reset_btn = PushButton(name="reset_button", text="Defaults")
        self._reset_btn.tooltip = (
            "Put every parameter back to the chosen model's defaults: Meta's, except for the "
            "built-in micro model (its filters and mirror averaging, see the README)."
        )
        self._run_btn.changed.connect(self.run)
        self._volume_btn.changed.connect(self.segment_volume)
        self._cancel_btn.changed.connect(self.cancel)
        self._reset_btn.changed.connect(self.reset_defaults)
        self._status = Label(name="status", label="Status", value="Ready")
        self._status.native.setWordWrap(True)  # hints are a sentence or two
        buttons = Container(
            widgets=[self._run_btn, self._volume_btn, self._cancel_btn, self._reset_btn],
            layout="horizontal",
            labels=False,
        )
        heading = Container(
            widgets=[Label(name="filters_heading", value="Filters (re-filter instantly):")],
            labels=False,
        )
        return [
            self._image,
            self._model,
            self._tiles,
            *self._run_controls.values(),
            heading,
            *self._filter_controls.values(),
            buttons,
            self._status,
        ]

    def run_settings(self) -> dict[str, Any]:
        """The settings that need the model (points, crops, stability offset, mirrors)."""
        run = {k: w.value for k, w in self._run_controls.items()}
        exact = META_DEFAULTS["crop_overlap_ratio"]  # 512/1500 shows as 0.3413
        if abs(run["crop_overlap_ratio"] - exact) < 5e-5:
            run["crop_overlap_ratio"] = exact
        return run

    def filter_settings(self) -> dict[str, float]:
        """The settings that only filter candidates."""
        return {k: w.value for k, w in self._filter_controls.items()}

    def model_defaults(self) -> dict[str, Any]:
        """Every setting's default for the chosen model type (as the loader decides it)."""
        return model_defaults(self._holder.model_type)

    def reset_defaults(self) -> None:
        """Every control to :meth:`model_defaults`; 'invert' as the image's polarity suggests."""
        self._set_controls({**self.model_defaults(), "invert": self._dark_on_bright})

    def _set_controls(self, values: dict[str, Any]) -> None:
        for k, w in {**self._run_controls, **self._filter_controls}.items():
            w.value = values[k]

    def _on_model_chosen(self) -> None:
        """A new model brings its own filter defaults and mirror averaging; the other run
        settings stay as the user set them."""
        defaults = self.model_defaults()
        self._set_controls(
            {**defaults, **self.run_settings(), "mirror_average": defaults["mirror_average"]}
        )

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._layer is not None and self._layer not in self._viewer.layers:
            self._layer = None
        self.reset_choices()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if isinstance(added, Image):  # a newly opened image is the one to segment
            self._image.value = added

    def _on_active_layer(self, event: Any = None) -> None:
        """Selecting an image layer in the layer list chooses it here too."""
        active = self._viewer.layers.selection.active
        if self._adding or not isinstance(active, Image) or active is self._image.value:
            return
        if active not in self._image.choices:  # selected before the insertion event
            self._image.reset_choices()
        self._image.value = active

    def _on_image_chosen(self, *_: Any) -> None:
        """A new image: forget the last run's candidates and status, suggest 'invert'."""
        self._timer.stop()
        self._candidates = self._target = None
        self._notify.reset()
        layer = self._image.value
        self._tiles.set_plane(None if layer is None else full_plane_shape(layer))
        self._dark_on_bright = layer is not None and self._looks_dark_on_bright(layer)
        self._run_controls["invert"].value = self._dark_on_bright
        self._status.value = (
            f"'{layer.name}' looks dark on bright: 'invert' is ticked (the model sees the "
            "inverted image; the layer is unchanged)"
            if self._dark_on_bright
            else "Ready"
        )

    def _looks_dark_on_bright(self, layer: Image) -> bool:
        """The polarity of the shown plane, as the model would get it."""
        try:
            target = resolve_target(layer, self._viewer.dims.point, POLARITY_SIDE)
        except (TargetError, ValueError, IndexError, TypeError):  # Run reports these
            return False
        return looks_dark_on_bright(target.rgb)

    def _on_run_setting_changed(self, *_: Any) -> None:
        if self._candidates is not None:
            self._status.value = "Settings changed: press Run to apply them"

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Segment the shown slice of the image (in a worker; a new Run replaces one running)."""
        image = self._image.value
        try:
            if image is None:
                raise TargetError(NO_IMAGE)
            point, choose = self._viewer.dims.point, self._tiles.choose
            target = resolve_chosen(image, point, choose, self._sources, self.max_side)
        except TargetError as exc:
            self._notify.error(str(exc))
            return
        run = self.run_settings()
        if target.tiles is not None:
            run |= target.tiles.generator_settings()
        self._runner.submit(
            partial(self._collect_job, target, run),
            on_done=partial(self._on_collected, target),
            on_error=self._on_error,
            on_cancel=self._on_cancelled,
            desc="SAM: whole-image segmentation",
        )

    def segment_volume(self) -> None:
        """Segment every slice of the chosen stack into 3D objects (in the worker)."""
        self._volume.start(self._image.value, {**self.run_settings(), **self.filter_settings()})

    def _collect_job(self, target: ImageTarget, run: dict[str, Any], report) -> tuple:
        """Worker side: model, then every candidate (memoised per image, model and settings)."""
        report(0, 0)
        loaded = self._holder.get()
        if target.source is None:
            image = image_key(target.rgb, loaded.model_id)
        else:  # a tiled plane, never read whole
            image = f"{target.source.identity()}|{target.slice_index}|{loaded.model_id}"
        key = (image, tuple(sorted(run.items())))
        cands = self._memo.get(key)
        if cands is None and target.source is not None:
            embed = self._tile_embedder(loaded, target, run)
            cands = collect_candidates(
                loaded.model, target.source, progress=report, embed=embed, **run
            )
        elif cands is None:
            cands = collect_candidates(loaded.model, target.rgb, progress=report, **run)
        if key not in self._memo:
            self._memo[key] = cands
            while len(self._memo) > 3:
                self._memo.popitem(last=False)
        return cands, loaded.note

    def _tile_embedder(self, loaded: Any, target: ImageTarget, run: dict[str, Any]) -> Any:
        """``embed(tile)`` for a tiled run: the run's kind of predictor, tiles cached."""
        model = loaded.model
        kind = MirrorAveragedPredictor if run["mirror_average"] else SamPredictor
        persistent = not loaded.loaded.random_weights
        tiles = TiledPredictor(
            kind(model),
            run["tile_shape"],
            run["halo"],
            run["zoom"],
            self._cache if persistent else EmbeddingCache(cache_dir=False),
            loaded.loaded.cache_id,
            bool(run["invert"]),
        )
        tiles.set_image(target.source)
        return tiles.embed_tile

    def _on_collected(self, target: ImageTarget, result: tuple) -> None:
        cands, note = result
        if note:
            self._notify.warning(f"SAM: {note}.")
        self._candidates, self._target = cands, target
        self.refilter(notify=True)

    def _on_error(self, exc: BaseException) -> None:
        self._notify.job_error(exc)
        self._status.value = "Failed (see notification)"

    def _on_cancelled(self) -> None:
        self._status.value = "Cancelled"

    def _on_busy(self, busy: bool) -> None:
        self._cancel_btn.enabled = busy
        self._phase.follow(busy)
        if busy:
            loading = not self._holder.is_loaded
            self._status.value = "Loading model..." if loading else "Segmenting..."

    def cancel(self) -> None:
        """Stop the run at the next batch of points; nothing is written."""
        self._runner.cancel()

    # ------------------------------------------------------------------ filtering
    def _schedule_refilter(self, *_: Any) -> None:
        if self._candidates is not None:
            self._timer.start()

    def refilter(self, notify: bool = False) -> None:
        """Apply the filter controls to the last run's candidates and show the labels.

        With no object left the status says what to change (and, with ``notify``, as after
        a Run, a notification too: not on every slider step)."""
        self._timer.stop()
        cands, target = self._candidates, self._target
        if cands is None or target is None:
            return
        n = self._write(target, cands)
        where = f" (slice {target.slice_index})" if target.slice_index else ""
        inverted = " (inverted input)" if cands.run_settings.get("invert") else ""
        self._status.value = f"{n} objects from {len(cands)} candidates{where}{inverted}"
        if n == 0:
            uninverted = self._dark_on_bright and not cands.run_settings.get("invert")
            hint = no_objects_hint(cands, self.filter_settings(), dark_on_bright=uninverted)
            self._status.value = (f"Slice {target.slice_index}: " if where else "") + hint
            if notify:
                self._notify.warning(f"SAM: {hint}")

    def _write(self, target: ImageTarget, cands: Candidates) -> int:
        """Filter ``cands`` into "SAM auto (<image>)" (one result layer per image, rewritten
        on every change); the number of objects. Tiled runs are painted chunk by chunk
        straight into the layer (a zarr array for planes over 8192 x 8192)."""
        layer = self._result_layer(target)
        if cands.tiles is None:
            labels = refilter_labels(cands, **self.filter_settings())
            layer.data[target.slice_index] = labels
            n = int(labels.max()) if labels.size else 0
        else:
            records = refilter(cands, **self.filter_settings())
            out = PlaneView(layer.data, target.slice_index)
            n = len(paint_labels(records, target.plane_shape, out=out)[1])
        layer.refresh()
        return n

    def _result_layer(self, target: ImageTarget) -> Labels:
        """The result layer of the target's image (made when missing or of another shape)."""
        name = f"SAM auto ({target.layer.name})"
        shape = tuple(target.spatial_shape)
        layer = self._viewer.layers[name] if name in self._viewer.layers else None
        if not isinstance(layer, Labels) or tuple(layer.data.shape) != shape:
            self._adding = True
            try:
                with keep_active(self._viewer):
                    layer = self._viewer.add_labels(
                        new_label_data(shape),
                        name=name,
                        scale=target.frame.scale,
                        translate=target.frame.translate,
                    )
            finally:
                self._adding = False
            self._layer = layer
        return layer

    def _sizing_labels(self) -> tuple[Any, tuple[int, ...]]:
        """The Labels layer whose objects size 'Suggest zoom': the selected one, else the
        last result; and the shown slice."""
        active = self._viewer.layers.selection.active
        layer = active if isinstance(active, Labels) else self._layer
        lead = max(0, self._viewer.dims.ndim - 2)
        return layer, tuple(int(v) for v in self._viewer.dims.current_step[:lead])

    @property
    def labels_layer(self) -> Labels | None:
        """The layer the last run wrote."""
        return self._layer


__all__ = ["AutoWidget", "TOOLTIPS"]
