"""Write the reference fixtures of the parity tests with Meta's own code.

Run from the repository root, in an environment with torch, torchvision, segment-anything,
pycocotools and opencv (not MindSpore)::

    /work/refvenv/bin/python tests/reference/make_fixtures.py

Writes, in ``tests/fixtures/``:

- ``tiny_sam.pth``: ``torch.save`` of the state dict of Meta's ``Sam`` built with our
  ``CONFIGS["tiny"]`` sizes (read from ``napari_sam_ms/build_sam.py`` without importing it)
  and the random weights of ``tests/reference.py``;
- ``reference_outputs.npz``: the test image, the inputs and outputs of Meta's
  ``SamPredictor.predict`` / ``predict_torch`` for every prompt case, the tiny config and the
  library versions used;
- ``reference_amg.json``: Meta's ``SamAutomaticMaskGenerator`` records for several settings.
  Each setting also lists ``final_nms_scores``: the score of every record in the last NMS
  Meta ran. Records with equal scores come out of torch's unstable sort in an unspecified
  order, so the tests compare those groups as sets.

Everything is deterministic: rerunning gives the same files (up to zip timestamps).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))

from reference import build_reference_sam  # noqa: E402

# Seed of the reference weights, and a scale of the "no mask" dense embedding: with these the
# random tiny model gives masks that survive whole-image filtering in several crops.
SEED = 2
NO_MASK_EMBED_SCALE = 0.1

H, W = 96, 120  # test image: not square, longest side below the model's 128


def read_configs(path: Path) -> dict[str, dict]:
    """``CONFIGS`` of build_sam.py, evaluated from its syntax tree (no import)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "CONFIGS":
            return {
                ast.literal_eval(k): {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords}
                for k, v in zip(node.value.keys, node.value.values, strict=True)
            }
    raise RuntimeError(f"no CONFIGS in {path}")


def make_image() -> np.ndarray:
    """A 96x120 RGB image: noisy dark background, three discs and a rectangle."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    img = 20 + rng.normal(0, 8, (H, W, 3))
    for cx, cy, r, col in [
        (30, 30, 14, (220, 60, 60)),
        (85, 60, 18, (60, 200, 90)),
        (60, 75, 9, (240, 240, 80)),
    ]:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = col
    img[10:25, 70:110] = (90, 90, 230)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_model(cfg: dict):
    sam = build_reference_sam(cfg, seed=SEED)
    with torch.no_grad():
        sam.prompt_encoder.no_mask_embed.weight.mul_(NO_MASK_EMBED_SCALE)
    return sam


# Prompt cases of SamPredictor.predict (pixels of the original image).
PREDICT_CASES: dict[str, dict] = {
    "point_multimask": dict(point_coords=[[30.0, 30.0]], point_labels=[1]),
    "point_single": dict(point_coords=[[85.0, 60.0]], point_labels=[1], multimask_output=False),
    "points_same_object": dict(
        point_coords=[[25.0, 28.0], [36.5, 33.0]], point_labels=[1, 1], multimask_output=False
    ),
    "points_fg_bg": dict(point_coords=[[85.0, 60.0], [60.0, 75.0]], point_labels=[1, 0]),
    "box": dict(box=[68.0, 40.0, 104.0, 79.0], multimask_output=False),
    "box_bg_point": dict(
        box=[10.0, 8.0, 112.0, 90.0],
        point_coords=[[30.0, 30.0]],
        point_labels=[0],
        multimask_output=False,
    ),
    "mask_input_points": dict(
        point_coords=[[30.0, 30.0], [50.0, 20.0]], point_labels=[1, 1], mask_input="feedback"
    ),
    "point_logits": dict(point_coords=[[60.0, 75.0]], point_labels=[1], return_logits=True),
    "box_logits": dict(box=[5.5, 3.25, 60.75, 55.0], multimask_output=False, return_logits=True),
}

# Batched cases of SamPredictor.predict_torch (prompts mapped with Meta's transform).
TORCH_CASES: dict[str, dict] = {
    "batch_boxes": dict(
        boxes=[[10, 10, 50, 50], [68, 40, 104, 79], [70, 10, 110, 25], [0, 0, 119, 95]],
        multimask_output=False,
    ),
    "batch_points": dict(point_coords=[[[30.0, 30.0]], [[85.0, 60.0]]], point_labels=[[1], [1]]),
    "batch_boxes_points": dict(
        boxes=[[10, 10, 50, 50], [68, 40, 104, 79]],
        point_coords=[[[40.0, 40.0]], [[80.0, 45.0]]],
        point_labels=[[0], [1]],
        multimask_output=False,
        return_logits=True,
    ),
}


def run_predictor(sam, image: np.ndarray) -> dict[str, np.ndarray]:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    out: dict[str, np.ndarray] = {
        "embedding": predictor.get_image_embedding().numpy(),
        "input_size": np.array(predictor.input_size),
    }
    low_res_of: dict[str, np.ndarray] = {}
    for name, case in PREDICT_CASES.items():
        kwargs = {k: np.asarray(v) for k, v in case.items() if k not in ("mask_input",)}
        kwargs.update({k: case[k] for k in ("multimask_output", "return_logits") if k in case})
        if case.get("mask_input") == "feedback":
            scores, low = low_res_of["point_multimask"]
            kwargs["mask_input"] = low[int(np.argmax(scores))][None]
        masks, scores, low_res = predictor.predict(**kwargs)
        low_res_of[name] = (scores, low_res)
        for key in ("point_coords", "point_labels", "box", "mask_input"):
            if key in kwargs:
                out[f"{name}.in.{key}"] = np.asarray(kwargs[key])
        out[f"{name}.masks"] = masks
        out[f"{name}.iou"] = scores
        out[f"{name}.low_res"] = low_res
    for name, case in TORCH_CASES.items():
        size = image.shape[:2]
        points = labels = boxes = None
        if "point_coords" in case:
            coords = torch.as_tensor(case["point_coords"], dtype=torch.float)
            points = predictor.transform.apply_coords_torch(coords, size)
            labels = torch.as_tensor(case["point_labels"], dtype=torch.int)
            out[f"{name}.in.point_coords"] = coords.numpy()
            out[f"{name}.in.point_labels"] = labels.numpy()
            out[f"{name}.in.point_coords_transformed"] = points.numpy()
        if "boxes" in case:
            raw = torch.as_tensor(case["boxes"], dtype=torch.float)
            boxes = predictor.transform.apply_boxes_torch(raw, size)
            out[f"{name}.in.boxes"] = raw.numpy()
            out[f"{name}.in.boxes_transformed"] = boxes.numpy()
        with torch.no_grad():
            masks, scores, low_res = predictor.predict_torch(
                points,
                labels,
                boxes=boxes,
                multimask_output=case.get("multimask_output", True),
                return_logits=case.get("return_logits", False),
            )
        out[f"{name}.masks"] = masks.numpy()
        out[f"{name}.iou"] = scores.numpy()
        out[f"{name}.low_res"] = low_res.numpy()
    # Boolean masks are stored bit-packed to keep the file small.
    for key in [k for k, v in out.items() if k.endswith(".masks") and v.dtype == bool]:
        out[key.replace(".masks", ".masks_packed")] = np.packbits(out[key], axis=-1)
        out[key.replace(".masks", ".masks_shape")] = np.array(out.pop(key).shape)
    return out


def amg_settings() -> dict[str, dict]:
    grid = np.random.default_rng(1).uniform(0.02, 0.98, size=(25, 2))
    return {
        "grid_no_filters": dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        "filters_rle": dict(
            points_per_side=8,
            pred_iou_thresh=0.05,
            stability_score_thresh=0.3,
            box_nms_thresh=1.0,  # keep every mask that passes the filters
            output_mode="uncompressed_rle",
        ),
        "crops_small_regions_coco": dict(
            points_per_side=8,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            crop_n_layers=1,
            crop_n_points_downscale_factor=2,
            crop_nms_thresh=0.5,
            min_mask_region_area=20,
            output_mode="coco_rle",
        ),
        "point_grid_odd_batches": dict(
            points_per_side=None,
            point_grids=[grid.tolist()],
            points_per_batch=7,
            pred_iou_thresh=-1.0,  # negative: no filter, as 0
            stability_score_thresh=0.0,
            box_nms_thresh=0.8,
        ),
        "defaults": dict(points_per_side=4),
    }


def run_amg(sam, image: np.ndarray) -> dict[str, dict]:
    import segment_anything.automatic_mask_generator as amg_module
    from pycocotools import mask as coco_mask
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import mask_to_rle_pytorch

    calls: list[tuple[np.ndarray, np.ndarray]] = []
    real_nms = amg_module.batched_nms

    def recording_nms(boxes, scores, idxs, iou_threshold):
        keep = real_nms(boxes, scores, idxs, iou_threshold)
        calls.append((scores.numpy().copy(), keep.numpy().copy()))
        return keep

    amg_module.batched_nms = recording_nms
    results = {}
    try:
        for name, params in amg_settings().items():
            kwargs = dict(params)
            if kwargs.get("point_grids") is not None:
                kwargs["point_grids"] = [np.asarray(g) for g in kwargs["point_grids"]]
            calls.clear()
            records = SamAutomaticMaskGenerator(sam, **kwargs).generate(image)
            final_scores: list[float] = []
            if records:
                scores, keep = calls[-1]
                final_scores = [float(s) for s in scores[keep]]
                assert len(final_scores) == len(records)
            for rec in records:
                seg = rec["segmentation"]
                if isinstance(seg, np.ndarray):  # binary_mask: store as uncompressed RLE
                    rec["segmentation"] = mask_to_rle_pytorch(torch.as_tensor(seg)[None])[0]
                elif isinstance(seg["counts"], str):  # coco_rle: keep an uncompressed copy
                    mask = coco_mask.decode({**seg, "counts": seg["counts"].encode()})
                    uncompressed = mask_to_rle_pytorch(torch.as_tensor(mask.astype(bool))[None])
                    rec["segmentation_uncompressed"] = uncompressed[0]
                rec["bbox"] = [float(v) for v in rec["bbox"]]
                rec["crop_box"] = [float(v) for v in rec["crop_box"]]
            results[name] = dict(params=params, records=records, final_nms_scores=final_scores)
            print(f"AMG {name}: {len(records)} masks")
    finally:
        amg_module.batched_nms = real_nms
    return results


def versions() -> dict[str, str]:
    import cv2
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "segment-anything": md.version("segment-anything"),
        "pycocotools": md.version("pycocotools"),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    torch.set_num_threads(2)
    cfg = read_configs(ROOT / "napari_sam_ms" / "build_sam.py")["tiny"]
    sam = build_model(cfg)
    image = make_image()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), FIXTURES / "tiny_sam.pth")

    arrays = run_predictor(sam, image)
    meta = {
        "config": cfg,
        "seed": SEED,
        "no_mask_embed_scale": NO_MASK_EMBED_SCALE,
        "versions": versions(),
        "predict_cases": PREDICT_CASES,
        "torch_cases": TORCH_CASES,
    }
    np.savez_compressed(
        FIXTURES / "reference_outputs.npz",
        image=image,
        meta=np.array(json.dumps(meta)),
        **arrays,
    )
    amg = run_amg(sam, image)
    with open(FIXTURES / "reference_amg.json", "w") as f:
        json.dump({"versions": meta["versions"], "settings": amg}, f, indent=None)
    sizes = {p.name: p.stat().st_size for p in FIXTURES.iterdir()}
    print("wrote", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
