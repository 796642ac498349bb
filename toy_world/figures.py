"""Figures (PNG, drawn with Pillow) and the Markdown report of the toy-world evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SCALE = 2
FONT = ImageFont.load_default(size=13)  # Pillow's scalable default (the bitmap one drops spaces)
COLOURS = {"nested": (200, 60, 40), "decoupled": (40, 110, 200), "single-token": (60, 160, 70), "none": (90, 90, 90)}


def _tile(image) -> Image.Image:
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    picture = Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
    return picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST)


def examples_grid(examples: dict, path: Path) -> None:
    """Rows: reference, then one row per method (weight 1); columns: held-out subjects."""
    rows = [("reference", examples[("nested", 1.0)][1])]
    rows += [(method, list(images)) for (method, _), (images, _, _) in examples.items()]
    _grid(rows, path)


def two_subject_grid(examples: dict, path: Path) -> None:
    """First row: the two references of each pair side by side; then one row per method."""
    pairs = [np.concatenate(photos, axis=1) for photos in examples["nested"][1]]
    rows = [(method, list(images)) for method, (images, _, _) in examples.items()]
    cell, label, gap = 64 * SCALE, 150, 8
    width = label + len(pairs) * (2 * cell + gap)
    canvas = Image.new("RGB", (width, (len(rows) + 1) * (cell + gap) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 8), "references (L | R)", fill=(0, 0, 0), font=FONT)
    for column, pair in enumerate(pairs):
        canvas.paste(_tile(pair), (label + column * (2 * cell + gap), 4))
    for row, (name, images) in enumerate(rows, start=1):
        y = 4 + row * (cell + gap)
        draw.text((4, y + 8), name, fill=(0, 0, 0), font=FONT)
        for column, image in enumerate(images):
            canvas.paste(_tile(image), (label + column * (2 * cell + gap) + cell // 2, y))
    canvas.save(path)


def _grid(rows, path: Path) -> None:
    cell, label, gap = 64 * SCALE, 130, 6
    columns = max(len(r[1]) for r in rows)
    canvas = Image.new("RGB", (label + columns * (cell + gap), len(rows) * (cell + gap) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, (name, images) in enumerate(rows):
        y = 4 + row * (cell + gap)
        draw.text((4, y + 4), name, fill=(0, 0, 0), font=FONT)
        for column, image in enumerate(images):
            canvas.paste(_tile(image), (label + column * (cell + gap), y))
    canvas.save(path)


def sweep_curve(sweep: dict, none: dict, path: Path) -> None:
    """Identity (x) against prompt alignment (y) for each method as its weight varies.

    ``sweep`` maps "method@weight" to scores (as in results.json); ``none`` is the no-adapter score.
    The axes span the data (rounded out to 0.1), not 0..1, so the differences stay visible.
    """
    width, height, margin = 560, 440, 64
    points = list(sweep.values()) + [none]
    x_range = (
        np.floor(min(p["identity"] for p in points) * 10) / 10,
        np.ceil(max(p["identity"] for p in points) * 10) / 10,
    )
    y_range = (np.floor(min(p["prompt"] for p in points) * 10) / 10, 1.0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def point(identity: float, prompt: float) -> tuple[float, float]:
        x = (identity - x_range[0]) / (x_range[1] - x_range[0])
        y = (prompt - y_range[0]) / (y_range[1] - y_range[0])
        return margin + x * (width - 2 * margin), height - margin - y * (height - 2 * margin)

    draw.line([point(x_range[0], y_range[0]), point(x_range[1], y_range[0])], fill=(0, 0, 0))
    draw.line([point(x_range[0], y_range[0]), point(x_range[0], y_range[1])], fill=(0, 0, 0))
    for tick in np.linspace(*x_range, 5):
        x, y = point(tick, y_range[0])
        draw.text((x - 12, y + 6), f"{tick:.2f}", fill=(0, 0, 0), font=FONT)
    for tick in np.linspace(*y_range, 5):
        x, y = point(x_range[0], tick)
        draw.text((x - 40, y - 7), f"{tick:.2f}", fill=(0, 0, 0), font=FONT)
    draw.text((width // 2 - 90, height - 26), "identity (held-out subjects)", fill=(0, 0, 0), font=FONT)
    draw.text((8, 8), "prompt alignment", fill=(0, 0, 0), font=FONT)
    methods = sorted({key.split("@")[0] for key in sweep})
    for number, method in enumerate(methods):
        series = sorted((float(key.split("@")[1]), s) for key, s in sweep.items() if key.split("@")[0] == method)
        line = [point(s["identity"], s["prompt"]) for _, s in series]
        draw.line(line, fill=COLOURS[method], width=2)
        for (weight, _), (x, y) in zip(series, line):
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[method])
            draw.text((x + 5, y - 15), f"{weight:g}", fill=COLOURS[method], font=FONT)
        draw.text((width - 170, 24 + 18 * number), f"{method} (label: weight)", fill=COLOURS[method], font=FONT)
    x, y = point(none["identity"], none["prompt"])
    draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline=COLOURS["none"], width=2)
    draw.text((width - 170, 24 + 18 * len(methods)), "no adapter (square)", fill=COLOURS["none"], font=FONT)
    canvas.save(path)


def markdown(report: dict) -> str:
    main = report["single_subject"]
    lines = [
        "# Toy world: does nested attention personalise?",
        "",
        "Generated by `python -m toy_world run` (seed "
        f"{report['seed']}); held-out identities only. Scores are fractions read back from the pixels by "
        "the world reader (its accuracy on clean scenes is listed at the end).",
        "",
        "## One subject (weight 1)",
        "",
        "| method | identity | shape | pattern | palette | prompt alignment | background | position | samples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in main.items():
        method = key.split("@")[0]
        lines.append(
            f"| {method} | **{s['identity']:.3f}** | {s['shape']:.2f} | {s['pattern']:.2f} | {s['palette']:.2f} | "
            f"**{s['prompt']:.3f}** | {s['background']:.2f} | {s['position']:.2f} | "
            f"{s['n']} |"
        )
    lines += [
        "",
        "![examples](single_subject.png)",
        "",
        "## Trade-off over the subject weight",
        "",
        "| method | weight | identity | prompt alignment | samples |",
        "|---|---|---|---|---|",
    ]
    for key, s in report["sweep"].items():
        method, weight = key.split("@")
        lines.append(f"| {method} | {weight} | {s['identity']:.3f} | {s['prompt']:.3f} | {s['n']} |")
    lines += [
        "",
        "![trade-off](tradeoff.png)",
        "",
        "## Two subjects in one image",
        "",
        "Each generated creature scored against its own reference (own) and the other one (other); "
        "blending or swapping raises 'other'.",
        "",
        "| method | own | other | background | pairs |",
        "|---|---|---|---|---|",
    ]
    for method, s in report["two_subjects"].items():
        lines.append(f"| {method} | **{s['own']:.3f}** | {s['other']:.3f} | {s['background']:.2f} | {s['n']} |")
    lines += [
        "",
        "![two subjects](two_subjects.png)",
        "",
        "## The instrument",
        "",
        "World-reader accuracy on clean rendered scenes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["reader_accuracy"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)
