"""Screenshots of napari with each widget docked after a segmentation.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py \\
        --model vit_b --checkpoint ~/sam_vit_b_01ec64.pth

Writes ``docs/screenshot_prompt.png``, ``docs/screenshot_auto.png``,
``docs/screenshot_finetune.png``, ``docs/screenshot_brightfield.png`` (a dark-on-bright
image segmented with *Invert*) and ``docs/screenshot_per_point.png`` (one object per point)
(``--only brightfield per_point`` makes two of them) and ``docs/images/propagate_3d.png``
(two nuclei of a synthetic z-stack clicked on one slice, propagated through z by the
*Volumes* widget, in napari's 3D view) and ``docs/images/propagate_tiles.png`` (a small nucleus
of a 768x768 z-stack propagated through tiles at the slices' own resolution).

Without ``--model``/``--checkpoint`` the widgets use the default model: the embedded
``micro`` model the package ships (or official vit_b when its weights are on the machine).
With ``--model stand-in``, or when no model is available, the widgets run with a *stand-in*
instead of SAM (a threshold-and-connected-components segmenter with the
predictor's interface), so the pictures show the widgets, layers and workflow, not SAM's
quality; the canvas says so. ``--model tiny`` runs the real tiny test model (random weights:
its masks are noise). The fine-tune picture trains a real model for a few steps on a
synthetic image with exact labels: the tiny test model unless ``--model``/``--checkpoint`` name
another, so its held-out figures are only as good as that model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("NAPARI_SAM_MS_SYNC", "1")  # deterministic: work runs inline
# Own napari settings (no notification pop-ups over the canvas; the user's stay untouched).
os.environ["NAPARI_CONFIG"] = os.path.join(tempfile.mkdtemp(), "settings.yaml")

DOCS = Path(__file__).resolve().parent
SIZE = (1600, 900)
STAND_IN = "stand-in segmenter, not SAM (no weights on this machine)"
SHOTS = (
    "prompt",
    "auto",
    "finetune",
    "brightfield",
    "per_point",
    "propagate_3d",
    "propagate_tiles",
)
_REAL_LOAD: dict = {}  # ModelHolder's default loader before the stand-in replaced it


class StandInPredictor:
    """Predictor interface backed by Otsu thresholding and connected components."""

    is_image_set = False

    def set_image(self, image: np.ndarray) -> None:
        from skimage import filters, measure, segmentation

        gray = image.mean(axis=-1)
        fg = gray > filters.threshold_otsu(gray)
        distance = filters.gaussian(gray, 2)
        self.labels = segmentation.watershed(-distance, measure.label(fg), mask=fg)
        self.fg = fg
        self.is_image_set = True

    @property
    def embedding(self):
        from napari_sam_ms.predictor import ImageEmbedding

        return ImageEmbedding(np.zeros((1, 1, 1, 1), np.float32), self.fg.shape, self.fg.shape)

    def set_embedding(self, embedding) -> None:
        raise KeyError("stand-in has no embedding")  # never cached on disk (persistent=False)

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        from skimage.morphology import binary_dilation, binary_erosion, disk

        if point_coords is not None and np.any(point_labels == 1):
            x, y = point_coords[np.argmax(point_labels == 1)]
        else:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        label = self.labels[int(y), int(x)]
        mask = self.labels == label if label else np.zeros_like(self.fg)
        masks = np.stack([binary_erosion(mask, disk(2)), mask, binary_dilation(mask, disk(2))])
        return masks, np.array([0.8, 0.95, 0.85], np.float32), None

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, **_):
        n = len(point_coords if point_coords is not None else boxes)
        outs = [
            self.predict(
                None if point_coords is None else point_coords[i],
                None if point_labels is None else point_labels[i],
                None if boxes is None else boxes[i],
            )
            for i in range(n)
        ]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]), None


def _stand_in_candidates(model, image, progress=None, **run):
    """Whole-image candidates: one per watershed region, scored by solidity."""
    from skimage import measure

    from napari_sam_ms.amg_refine import Candidates
    from napari_sam_ms.utils.amg import MaskData, batched_mask_to_box, mask_to_rle

    predictor = StandInPredictor()
    predictor.set_image(image)
    regions = measure.regionprops(predictor.labels)
    masks = np.stack([predictor.labels == r.label for r in regions])
    h, w = masks.shape[1:]
    data = MaskData(
        iou_preds=np.array([r.solidity for r in regions], np.float32),
        stability_score=np.full(len(regions), 0.97, np.float32),
        boxes=batched_mask_to_box(masks),
        crop_boxes=np.tile([0, 0, w, h], (len(regions), 1)),
        points=np.array([r.centroid[::-1] for r in regions]),
        rles=mask_to_rle(masks),
    )
    if progress is not None:
        progress(1, 1)
    return Candidates((h, w), [[0, 0, w, h]], [data], run)


def _use_stand_in() -> None:
    from napari_sam_ms._qt import auto_widget
    from napari_sam_ms.interaction import ModelHolder
    from napari_sam_ms.loader import LoadedModel

    def load(model_type, checkpoint):
        return LoadedModel(object(), model_type or "vit_b", None, "stand-in", random_weights=True)

    defaults = ModelHolder.__init__.__kwdefaults__
    _REAL_LOAD.update(defaults)
    defaults.update(loader=load, predictor_factory=lambda loaded: StandInPredictor())
    auto_widget.collect_candidates = _stand_in_candidates


def _save(viewer, path: Path, width: int = 1280) -> None:
    """Grab the whole window, shrink it and store it as a small palette PNG."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(rgba)[..., :3])
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def _dock(viewer, name: str, model: str, checkpoint: str | None):
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-ms", name)
    widget._model.model_type = model
    widget._model.checkpoint = checkpoint
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()  # let the dock take its width before fitting the view
    viewer.reset_view()
    return widget


def prompt_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """Two committed objects (a click and a box) and a live preview with fg/bg points."""
    widget = _dock(viewer, "Segment with prompts", model, checkpoint)
    points, boxes = widget.points_layer, widget.boxes_layer
    points.add([53, 181])
    widget.commit()
    boxes.add_rectangles(np.array([[[162, 264], [220, 315]]]))
    widget.commit()
    points.add([403, 59])
    widget.toggle_label()
    points.add([400, 100])
    widget.toggle_label()
    widget.update_preview()
    _save(viewer, DOCS / "screenshot_prompt.png")
    viewer.window.remove_dock_widget(widget.native.parent())
    for layer in list(viewer.layers):
        if layer.name.startswith("SAM"):
            viewer.layers.remove(layer)


def auto_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """Whole-image segmentation; filters loosened as microscopy needs (USERS.md item 5)."""
    widget = _dock(viewer, "Automatic segmentation", model, checkpoint)
    # The tiny model has random weights: keep everything. The embedded micro model comes
    # with its own filter defaults (the widget sets them when it is chosen).
    widget["points_per_side"].value = 16 if model == "tiny" else 32
    if model != "micro":
        iou, stability = (0.0, 0.0) if model == "tiny" else (0.75, 0.85)
        widget["pred_iou_thresh"].value = iou
        widget["stability_score_thresh"].value = stability
    widget.run()
    _save(viewer, DOCS / "screenshot_auto.png")


def finetune_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """A short fine-tuning run on a synthetic image and its labels: log, progress, result."""
    from napari_sam_ms.interaction import ModelHolder
    from napari_sam_ms.training.synthetic import render_sample

    if _REAL_LOAD:  # the stand-in cannot be trained: use the tiny model
        ModelHolder.__init__.__kwdefaults__.update(_REAL_LOAD)
        model, checkpoint = "tiny", None
    if model == "tiny":
        viewer.text_overlay.text = "tiny test model (random weights): its figures are not SAM's"
    viewer.layers.clear()
    sample = render_sample(3, "nuclei", (512, 512))
    viewer.add_image(sample.image, name="nuclei (synthetic)", colormap="gray")
    viewer.add_labels(sample.labels, name="nuclei labels", opacity=0.4)
    widget = _dock(viewer, "Fine-tune SAM", model, checkpoint)
    widget["pair_buttons"]["add_pair_button"].clicked.emit()
    widget["steps"].value = 20
    if model == "tiny":  # fewer objects and no correction clicks: seconds, not minutes
        widget.extra_settings = dict(correction_rounds=0, batch_images=1, objects_per_image=4)
    widget["output_file"].value = Path(tempfile.mkdtemp()) / "nuclei_finetuned.ckpt"
    widget["run_buttons"]["start_button"].clicked.emit()
    _save(viewer, DOCS / "screenshot_finetune.png")


def _nuclei_clicks(n: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The sample image and (row, col) centres of ``n`` of its nuclei, spread over it."""
    from napari_sam_ms.sample_data import fluorescent_nuclei

    image, labels = fluorescent_nuclei(return_labels=True)
    ids = np.unique(labels)[1:]
    centres = [tuple(np.argwhere(labels == i).mean(axis=0)) for i in ids]
    centres.sort(key=lambda rc: (round(rc[0] / 128), rc[1]))  # bands of rows, left to right
    step = max(1, len(centres) // n)
    return image, centres[::step][:n]


def _fresh(viewer, image: np.ndarray, name: str, **kwargs):
    """Only ``image`` in the viewer, no dock widgets."""
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    return viewer.add_image(image, name=name, **kwargs)


def brightfield_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """Dark nuclei on a bright ground (the sample, inverted into H&E-like colours): Invert
    ticked, several nuclei committed, one more previewed."""
    from napari_sam_ms.utils.image import to_rgb_uint8

    image, clicks = _nuclei_clicks(10)
    gray = to_rgb_uint8(image, tuple(np.percentile(image, [0.5, 99.8])))[..., 0] / 255.0
    tint = np.array([150.0, 205.0, 95.0])  # nuclei purple, background near white
    rgb = np.clip(250 - gray[..., None] * tint, 0, 255).astype(np.uint8)
    _fresh(viewer, rgb, "bright-field (synthetic)", rgb=True)
    widget = _dock(viewer, "Segment with prompts", model, checkpoint)
    widget.points_layer.add(clicks[0])
    widget.update_preview()
    print("before Invert:", widget._status.value)
    widget._invert.value = True
    widget._per_point.value = True
    widget.points_layer.data = np.array(clicks[:-1])
    widget.commit()
    widget.points_layer.add(clicks[-1])
    widget.update_preview()
    print("after Invert:", widget._status.value, "|", widget._candidate.value)
    _save(viewer, DOCS / "screenshot_brightfield.png")


def per_point_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """One object per point: eight clicks (and one background point), eight objects
    previewed in their own colours, from one model call."""
    image, clicks = _nuclei_clicks(8)
    lo, hi = np.percentile(image, [0.5, 99.8])
    _fresh(viewer, image, "nuclei (synthetic)", colormap="gray", contrast_limits=(lo, hi))
    widget = _dock(viewer, "Segment with prompts", model, checkpoint)
    widget.toggle_per_point()
    widget.points_layer.data = np.array(clicks)
    widget.toggle_label()
    row, col = clicks[0]
    widget.points_layer.add([row + 22, col + 22])  # background, joins the nearest object
    widget.toggle_label()
    widget.update_preview()
    print("per point:", widget._status.value, "|", widget._candidate.value)
    _save(viewer, DOCS / "screenshot_per_point.png")


def _nuclei_stack(shape=(24, 128, 128)) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A z-stack of bright ellipsoidal nuclei (blurred, noisy) and their centres (z, y, x)."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    nuclei = [((12, 40, 42), (7, 13, 11)), ((11, 80, 86), (6, 11, 13)), ((13, 95, 32), (5, 9, 9))]
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    image = np.full(shape, 25.0)
    for (cz, cy, cx), (rz, ry, rx) in nuclei:
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[inside] = rng.uniform(150, 210)
    image = ndimage.gaussian_filter(image, (0.6, 1.0, 1.0)) + rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), [c for c, _ in nuclei]


def _committed_then_volumes(viewer, model, checkpoint, z: int, clicks: list) -> tuple:
    """Click on slice ``z`` (one object per point), commit, then dock *Volumes* on the labels
    with the ``box`` prompt: (labels layer, Volumes widget)."""
    prompt = _dock(viewer, "Segment with prompts", model, checkpoint)
    viewer.dims.set_current_step(0, z)
    if len(clicks) > 1:
        prompt.toggle_per_point()
    prompt.points_layer.data = np.array(clicks, float)
    prompt.commit()
    labels = viewer.layers["SAM labels"]
    viewer.window.remove_dock_widget(prompt.native.parent())
    volumes = _dock(viewer, "Volumes", model, checkpoint)
    volumes._labels_choice.value = labels
    volumes._prompt.value = "box"
    return labels, volumes


def propagate_3d_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """Two nuclei clicked on one slice and committed (Segment with prompts), propagated
    through z (Volumes, prompt ``box``: the better kind on this scene), shown in 3D with the
    stack as a dim MIP; z is drawn twice as deep as a pixel (layer scale)."""
    from napari_sam_ms._qt.common import camera

    image, centres = _nuclei_stack()
    _fresh(viewer, image, "nuclei stack (synthetic)", colormap="gray", scale=(2, 1, 1))
    z = centres[0][0]
    clicks = [[z, y, x] for _, y, x in (centres[0], centres[2])]
    labels, volumes = _committed_then_volumes(viewer, model, checkpoint, z, clicks)
    volumes.precompute()
    for label in sorted(labels.metadata["sam_prompts"]):
        volumes._object_id.value = int(label)
        volumes.propagate()
        print("propagate:", volumes._status.value)
    for layer in list(viewer.layers):
        layer.visible = layer is labels or layer.name.startswith("nuclei")
    stack = viewer.layers["nuclei stack (synthetic)"]
    stack.rendering, stack.opacity = "mip", 0.4
    stack.bounding_box.visible = True  # the stack's extent, so the depth reads
    viewer.axes.visible = True
    viewer.layers.selection.active = labels
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera(viewer).angles = (10, -55, 120)
    camera(viewer).zoom *= 0.8  # the whole box in view
    (DOCS / "images").mkdir(exist_ok=True)
    _save(viewer, DOCS / "images" / "propagate_3d.png")


def _small_nuclei_stack(shape=(16, 768, 768)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A large z-stack of small nuclei (radius 5-8 px) and the centre of one of them."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    image = np.full(shape, 20.0)
    centres = []
    for _ in range(160):
        c = (rng.uniform(5, shape[0] - 5), *rng.uniform(20, shape[1] - 20, 2))
        r = (rng.uniform(3, 5), *rng.uniform(5, 8, 2))
        box = tuple(
            slice(max(0, int(c[i] - r[i] - 1)), min(shape[i], int(c[i] + r[i] + 2)))
            for i in range(3)
        )
        gz, gy, gx = np.ogrid[box]
        inside = ((gz - c[0]) / r[0]) ** 2 + ((gy - c[1]) / r[1]) ** 2 + ((gx - c[2]) / r[2]) ** 2
        image[box][inside <= 1] = rng.uniform(120, 220)
        centres.append(tuple(int(round(v)) for v in c))
    image = ndimage.gaussian_filter(image, (0.6, 1.0, 1.0)) + rng.normal(0, 8, shape)
    middle = min(
        centres, key=lambda c: abs(c[0] - shape[0] / 2) + np.hypot(c[1] - 384, c[2] - 384) / 50
    )
    return np.clip(image, 0, 255).astype(np.uint8), middle


def propagate_tiles_screenshot(viewer, model: str, checkpoint: str | None) -> None:
    """A small nucleus of a 16 x 768 x 768 stack clicked on one slice and propagated
    through z by the *Volumes* widget: the slices are answered from one tile each, at their
    own resolution (3x the model input: tiling is automatic). Shown on a slice off the one
    clicked, zoomed in, with the widget's status."""
    image, (z, y, x) = _small_nuclei_stack()
    _fresh(viewer, image, "small nuclei, 768x768 (synthetic)", colormap="gray")
    labels, volumes = _committed_then_volumes(viewer, model, checkpoint, z, [[z, y, x]])
    volumes._object_id.value = int(max(labels.metadata["sam_prompts"]))
    volumes.propagate()
    print("propagate (tiles):", volumes._status.value)
    for layer in list(viewer.layers):
        layer.visible = layer is labels or layer.name.startswith("small nuclei")
    viewer.layers.selection.active = labels
    shown = max(z - 2, 0)
    viewer.dims.set_current_step(0, shown)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()  # the layers' own view changes first
    viewer.camera.center = (y, x)
    viewer.camera.zoom = 5.0
    viewer.text_overlay.text = f"slice {shown}: propagated from the click on slice {z} (tiles)"
    (DOCS / "images").mkdir(exist_ok=True)
    _save(viewer, DOCS / "images" / "propagate_tiles.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="micro, vit_b, vit_l, vit_h, tiny or stand-in"
    )
    parser.add_argument("--checkpoint", default=None, help="weights file for --model")
    parser.add_argument(
        "--only", nargs="+", choices=SHOTS, default=SHOTS, help="make only these screenshots"
    )
    args = parser.parse_args()
    from napari_sam_ms import weights

    if args.model is None and args.checkpoint is None and weights.embedded_model_available():
        args.model = weights.default_model_type()
    if args.model == "stand-in" or (args.model is None and args.checkpoint is None):
        _use_stand_in()
        model, caption = "vit_b", STAND_IN
    elif args.model == "micro":
        model, caption = "micro", "embedded default model (micro, trained here on synthetic data)"
    else:
        model = args.model or "vit_b"
        caption = f"SAM {model}" if model != "tiny" else "tiny test model: random weights"

    import napari

    viewer = napari.Viewer(title="napari-sam-ms")
    viewer.window._qt_window.resize(*SIZE)
    viewer.open_sample("napari-sam-ms", "nuclei")
    viewer.text_overlay.visible = True
    viewer.text_overlay.color = "yellow"
    viewer.text_overlay.text = caption
    shots = {
        "prompt": prompt_screenshot,
        "auto": auto_screenshot,
        "finetune": finetune_screenshot,
        "brightfield": brightfield_screenshot,
        "per_point": per_point_screenshot,
        "propagate_3d": propagate_3d_screenshot,
        "propagate_tiles": propagate_tiles_screenshot,
    }
    for name in SHOTS:
        if name in args.only:
            shots[name](viewer, model, args.checkpoint)
    viewer.close()


if __name__ == "__main__":
    main()
