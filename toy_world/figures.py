"""Figures (PNG, drawn with Pillow) and the Markdown report of the toy-world evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SCALE = 2
FONT = ImageFont.load_default(size=13)  # Pillow's scalable default (the bitmap one drops spaces)
COLOURS = {
    "nested": (200, 60, 40),
    "decoupled": (40, 110, 200),
    "single-token": (60, 160, 70),
    "ipa-as-nested": (150, 90, 180),
    "none": (90, 90, 90),
}


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
    cell, label, gap = 64 * SCALE, 170, 8
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
    """Identity (x) against prompt alignment (y) for each method as its weight varies, each point
    with its standard errors as bars.

    ``sweep`` maps "method@weight" to scores (as in results.json: (mean, se) pairs); ``none`` is the
    no-adapter score. The axes span the data (rounded out to 0.05), so the differences stay visible.
    """
    width, height, margin, legend = 860, 480, 64, 220  # the legend to the right of the axes
    points = list(sweep.values()) + [none]
    x_range = (
        np.floor(min(p["identity"][0] - p["identity"][1] for p in points) * 20) / 20,
        np.ceil(max(p["identity"][0] + p["identity"][1] for p in points) * 20) / 20,
    )
    y_range = (min(np.floor(min(p["prompt"][0] - p["prompt"][1] for p in points) * 20) / 20, 0.95), 1.0)
    x_range = (x_range[0], max(x_range[1], x_range[0] + 0.05))  # (all points alike: a smoke run)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def point(identity: float, prompt: float) -> tuple[float, float]:
        x = (identity - x_range[0]) / (x_range[1] - x_range[0])
        y = (prompt - y_range[0]) / (y_range[1] - y_range[0])
        return margin + x * (width - legend - 2 * margin), height - margin - y * (height - 2 * margin)

    draw.line([point(x_range[0], y_range[0]), point(x_range[1], y_range[0])], fill=(0, 0, 0))
    draw.line([point(x_range[0], y_range[0]), point(x_range[0], y_range[1])], fill=(0, 0, 0))
    for tick in np.linspace(*x_range, 5):
        x, y = point(tick, y_range[0])
        draw.text((x - 12, y + 6), f"{tick:.2f}", fill=(0, 0, 0), font=FONT)
    for tick in np.linspace(*y_range, 5):
        x, y = point(x_range[0], tick)
        draw.text((x - 40, y - 7), f"{tick:.2f}", fill=(0, 0, 0), font=FONT)
    draw.text(((width - legend) // 2 - 90, height - 26), "identity (held-out subjects)", fill=(0, 0, 0), font=FONT)
    draw.text((8, 8), "prompt alignment", fill=(0, 0, 0), font=FONT)
    methods = [m for m in COLOURS if series(sweep, m)]
    for number, method in enumerate(methods):
        points = series(sweep, method)
        line = [point(s["identity"][0], s["prompt"][0]) for _, s in points]
        draw.line(line, fill=COLOURS[method], width=2)
        for (weight, s), (x, y) in zip(points, line):
            left, _ = point(s["identity"][0] - s["identity"][1], s["prompt"][0])
            right, _ = point(s["identity"][0] + s["identity"][1], s["prompt"][0])
            _, low = point(s["identity"][0], s["prompt"][0] - s["prompt"][1])
            _, high = point(s["identity"][0], s["prompt"][0] + s["prompt"][1])
            draw.line([(left, y), (right, y)], fill=COLOURS[method])
            draw.line([(x, low), (x, high)], fill=COLOURS[method])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[method])
            draw.text((x + 5, y - 15), f"{weight:g}", fill=COLOURS[method], font=FONT)
        draw.text((width - legend, 60 + 18 * number), f"{method} (label: weight)", fill=COLOURS[method], font=FONT)
    x, y = point(none["identity"][0], none["prompt"][0])
    draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline=COLOURS["none"], width=2)
    draw.text((width - legend, 60 + 18 * len(methods)), "no adapter (square)", fill=COLOURS["none"], font=FONT)
    canvas.save(path)


def series(sweep: dict, method: str) -> list[tuple[float, dict]]:
    """(weight, scores) of one method in the sweep, by weight."""
    return sorted((float(key.split("@")[1]), s) for key, s in sweep.items() if key.split("@")[0] == method)


def prompt_at_identity(sweep: dict, method: str, identity: float) -> "float | None":
    """The method's prompt alignment where its identity reaches ``identity``, interpolated linearly
    between the two sweep weights around it (None outside the method's range)."""
    points = [(s["identity"][0], s["prompt"][0]) for _, s in series(sweep, method)]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if min(x0, x1) <= identity <= max(x0, x1) and x0 != x1:
            return y0 + (y1 - y0) * (identity - x0) / (x1 - x0)
    return None


def equal_identity(sweep: dict, first: str = "nested", second: str = "decoupled", levels: int = 5) -> list[tuple]:
    """(identity, prompt of first, prompt of second) at identities both methods reach in the sweep."""
    ranges = []
    for method in (first, second):
        values = [s["identity"][0] for _, s in series(sweep, method)]
        ranges.append((min(values), max(values)))
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if low >= high:
        return []
    return [
        (level, prompt_at_identity(sweep, first, level), prompt_at_identity(sweep, second, level))
        for level in np.linspace(low, high, levels)
    ]


def best_weight(sweep: dict, method: str, none: dict, tolerance: float = 0.02) -> "tuple[float, dict] | None":
    """The weight with the best identity among those whose prompt alignment is within ``tolerance``
    of no adapter's (None when no weight is)."""
    allowed = [(w, s) for w, s in series(sweep, method) if s["prompt"][0] >= none["prompt"][0] - tolerance]
    return max(allowed, key=lambda item: item[1]["identity"][0]) if allowed else None


def cell(value) -> str:
    """A (mean, se) pair as "0.123 ± 0.012"."""
    return f"{value[0]:.3f} ± {value[1]:.3f}"


def markdown(report: dict) -> str:
    lines = [
        "# Toy world: does nested attention personalise?",
        "",
        f"Generated by `python -m toy_world run` (seed {report['seed']}); held-out identities only; every score is "
        "the mean over images ± its standard error. Scores are fractions read back from the pixels by the world "
        "reader (its accuracy on clean scenes is listed at the end). Identity: the reference's shape, pattern and "
        "palette found; prompt alignment: the caption's class, background and position found.",
        "",
        "## The base model's grounding (python -m toy_world diagnose)",
        "",
        "| steps | class word's attention on its object | on the background | ratio |",
        "|---|---|---|---|",
    ]
    for name, row in report["grounding"]["word_attention"].items():
        lines.append(f"| {name} | {cell(row['object'])} | {cell(row['background'])} | {row['ratio']:.1f} |")
    lines += [
        "",
        "## One subject (weight 1)",
        "",
        "| method | identity | shape | pattern | palette | prompt alignment | class | background | position | images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in report["single_subject"].items():
        method = key.split("@")[0]
        lines.append(
            f"| {method} | **{cell(s['identity'])}** | {cell(s['shape'])} | {cell(s['pattern'])} | "
            f"{cell(s['palette'])} | **{cell(s['prompt'])}** | {cell(s['class'])} | {cell(s['background'])} | "
            f"{cell(s['position'])} | {s['n']} |"
        )
    lines += [
        "",
        "![examples](single_subject.png)",
        "",
        "## Over the subject weight",
        "",
        "ipa-as-nested: the decoupled adapter's file in the IP-Adapter-Plus layout, loaded by Load Nested Adapter "
        "and applied as a nested adapter.",
        "",
        "| method | weight | identity | prompt alignment | background | position | images |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in report["sweep"].items():
        method, weight = key.split("@")
        lines.append(
            f"| {method} | {weight} | {cell(s['identity'])} | {cell(s['prompt'])} | {cell(s['background'])} | "
            f"{cell(s['position'])} | {s['n']} |"
        )
    lines += ["", "![trade-off](tradeoff.png)", ""]
    none = report["single_subject"]["none@0.0"]
    levels = equal_identity(report["sweep"])
    lines += [
        "At equal identity (prompt alignment of each method where its curve reaches that identity, linear "
        "between sweep weights):",
        "",
        "| identity | nested: prompt alignment | decoupled: prompt alignment |",
        "|---|---|---|",
    ]
    lines += [f"| {level:.3f} | {a:.3f} | {b:.3f} |" for level, a, b in levels] or [
        "| (the curves do not overlap) | | |"
    ]
    best = best_weight(report["sweep"], "ipa-as-nested", none)
    lines += [
        "",
        f"IP-Adapter-Plus file as a nested adapter: the best identity with prompt alignment within 0.02 of no "
        f"adapter ({none['prompt'][0]:.3f}) is "
        + (
            f"at weight {best[0]:g}: identity {cell(best[1]['identity'])}, prompt alignment {cell(best[1]['prompt'])}."
            if best
            else "at no weight of the sweep."
        ),
        "",
    ]
    for key, title, figure in (
        ("two_classes", "Two subjects of two classes, no masks", "two_classes.png"),
        ("same_class", "Two subjects of one class (occurrence 1 and 2)", "same_class.png"),
    ):
        lines += [
            f"## {title}",
            "",
            "Each generated object scored against its own reference (own) and the other one (other); "
            "blending or swapping raises 'other'.",
            "",
            "| method | own | other | own − other | class | background | pairs |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, s in report[key].items():
            lines.append(
                f"| {method} | **{cell(s['own'])}** | {cell(s['other'])} | {cell(s['own_minus_other'])} | "
                f"{cell(s['class'])} | {cell(s['background'])} | {s['n']} |"
            )
        lines += ["", f"![{title}]({figure})", ""]
    lines += [
        "## The instrument",
        "",
        "World-reader accuracy on clean rendered scenes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["reader_accuracy"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)
