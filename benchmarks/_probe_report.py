"""The design probe's report: JSON, a Markdown table and a PNG of the learning curves
(drawn with OpenCV: no plotting library is a dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


def write_report(out: Path, settings: dict[str, Any], results: dict[str, dict]) -> None:
    """``probe.json``, ``probe.md`` and ``probe.png`` in ``out`` (atomic JSON)."""
    from napari_sam_ms.utils.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probe.json", {"settings": settings, "designs": results}, overwrite=True)
    (out / "probe.md").write_text(markdown(settings, results))
    cv2.imwrite(str(out / "probe.png"), plot(results, settings["cpu_minutes"]))


def markdown(settings: dict[str, Any], results: dict[str, dict]) -> str:
    """A summary table per design and the full curves."""
    s = settings
    lines = [
        "# Design probe: held-out mIoU after equal CPU time",
        "",
        f"Budget {s['cpu_minutes']} CPU minutes per design (training steps only), validation "
        f"every {s['eval_every']} CPU minutes on {s['n_val']} fixed `wide` validation images; "
        f"{s['n_train']} `wide` training images, batches of {s['batch_images']} x "
        f"{s['objects_per_image']} objects, {s['correction_rounds']} correction round(s), "
        f"lr {s['lr']} (constant after {s['warmup_steps']} warm-up steps), seed {s['seed']}.",
        "",
        "| design | parameters | steps | CPU min | compile CPU s | one click (last) | "
        "box (last) | one click (best) | box (best) | done |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        curve = r["curve"] or [{"point_miou": float("nan"), "box_miou": float("nan")}]
        last = curve[-1]
        lines.append(
            f"| {name} | {r.get('params', 0) / 1e6:.2f} M | {r['step']} | "
            f"{r['cpu_seconds'] / 60:.1f} | {r['compile_cpu_seconds']:.0f} | "
            f"{last['point_miou']:.3f} | {last['box_miou']:.3f} | "
            f"{max(c['point_miou'] for c in curve):.3f} | "
            f"{max(c['box_miou'] for c in curve):.3f} | {'yes' if r['done'] else 'no'} |"
        )
    slow = [name for name, r in results.items() if r.get("op_by_op")]
    if slow:
        lines += ["", f"Trained op by op (compiled training does not fit in memory): {slow}."]
    lines += [
        "",
        "## Curves",
        "",
        "| design | step | CPU min | one click | box | objects |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for c in r["curve"]:
            lines.append(
                f"| {name} | {c['step']} | {c['cpu_minutes']:.2f} | {c['point_miou']:.3f} | "
                f"{c['box_miou']:.3f} | {c['n_objects']} |"
            )
    lines += ["", "![learning curves](probe.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, dict], cpu_minutes: float, size=(900, 520)) -> np.ndarray:
    """Held-out mIoU against CPU minutes: one colour per design, one click solid with
    filled dots, box thin with open dots."""
    w, h = size
    left, right, top, bottom = 70, 200, 40, 60
    img = np.full((h, w, 3), 255, np.uint8)
    x_max = max(cpu_minutes, 1e-6)

    def xy(minutes: float, miou: float) -> tuple[int, int]:
        x = left + (w - left - right) * minutes / x_max
        y = h - bottom - (h - top - bottom) * np.clip(miou, 0, 1)
        return int(round(x)), int(round(y))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(6):  # mIoU grid 0, 0.2, ..., 1
        _, y = xy(0, k / 5)
        cv2.line(img, (left, y), (w - right, y), (225, 225, 225), 1)
        cv2.putText(img, f"{k / 5:.1f}", (left - 40, y + 5), font, 0.45, (0, 0, 0), 1)
    for k in range(6):
        x, _ = xy(x_max * k / 5, 0)
        cv2.putText(img, f"{x_max * k / 5:.1f}", (x - 12, h - bottom + 20), font, 0.45, 0, 1)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    cv2.putText(img, "training CPU minutes", (left + 220, h - 15), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "held-out mIoU", (10, 25), font, 0.5, (0, 0, 0), 1)
    for i, (name, r) in enumerate(results.items()):
        colour = COLOURS[i % len(COLOURS)]
        for key, thick, fill in (("point_miou", 2, -1), ("box_miou", 1, 1)):
            pts = [xy(c["cpu_minutes"], c[key]) for c in r["curve"] if np.isfinite(c[key])]
            for a, b in zip(pts, pts[1:], strict=False):
                cv2.line(img, a, b, colour, thick, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 4, colour, fill, cv2.LINE_AA)
        y0 = top + 20 + 40 * i
        cv2.putText(img, name, (w - right + 15, y0), font, 0.5, colour, 1, cv2.LINE_AA)
        cv2.putText(
            img,
            "click: solid, box: thin",
            (w - right + 15, y0 + 16),
            font,
            0.35,
            colour,
            1,
            cv2.LINE_AA,
        )
    return img
