"""What the toy base model can do, measured on the committed models: the two properties nested
attention builds on.

1. Grounding: with the nested adapter bound (weight 1; a subject never changes the word's key, so
   this is the base model's own attention), the recorded a_s* (the share of each image position's
   attention on the class word, averaged over heads and layers) on the object's cells and on the
   background, over all steps and per third of the steps. The nested value only ever enters a
   position's output scaled by this share.
2. Text control: with no adapter, captions that describe held-out objects ("... a teal striped
   horned robot"); how often the reader finds the described class, shape, pattern and palette.
   Whatever a word's value can carry, the base model must be able to draw from words.

    python -m toy_world diagnose     # writes toy_world/results/diagnostics.md and .json
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

import torch

from nested_attention.nodes.recording import record_model

from .evaluate import Toolkit, mean_se, personalised, sample
from .reader import SINGLE, read, shape_id
from .world import BACKGROUNDS, POSITIONS, SHAPES_PER_CLASS, Identity, Scene, object_mask, subject_photo

PARTS = ("input", "middle", "output")


def word_attention(kit: Toolkit, identities: Sequence[Identity], seed: int) -> dict:
    """Mean a_s* of the class word on its object's cells and on the background, (mean, se) over
    images, for all steps and for each third of them; and the ratio of the means."""
    rng = random.Random(seed)
    thirds = {"all": (0, kit.steps - 1)}
    for number, name in enumerate(("first third", "second third", "last third")):
        thirds[name] = (number * kit.steps // 3, (number + 1) * kit.steps // 3 - 1)
    found: dict[str, dict[str, list[float]]] = {name: {"object": [], "background": []} for name in thirds}
    for identity in identities:
        scene = Scene((identity,), rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)))
        model = personalised(kit, "nested", [(subject_photo(identity, rng), identity.word)])
        model, recording = record_model(model, 8)
        sample(kit, model, scene.caption, rng.randrange(2**31))
        inside = torch.from_numpy(object_mask(scene))
        for name, (first, last) in thirds.items():
            averaged = recording.averaged(0, PARTS, first, last)
            if averaged is None:  # (fewer than three steps)
                continue
            share = averaged[0, 0]  # [8, 8]
            found[name]["object"].append(float(share[inside].mean()))
            found[name]["background"].append(float(share[~inside].mean()))
    report = {}
    for name, values in found.items():
        if not values["object"]:
            continue
        on, off = mean_se(values["object"]), mean_se(values["background"])
        report[name] = {"object": on, "background": off, "ratio": on[0] / max(off[0], 1e-9)}
    return report


def text_control(kit: Toolkit, identities: Sequence[Identity], seed: int) -> dict[str, tuple[float, float]]:
    """Fraction of described attributes the base model draws (no adapter), (mean, se)."""
    rng = random.Random(seed)
    scenes = [
        Scene((identity,), rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)), describe=True)
        for identity in identities
    ]
    images = torch.stack([sample(kit, kit.model, scene.caption, rng.randrange(2**31)) for scene in scenes])
    reads = read(kit.reader, images, SINGLE)
    truth = [s.identities[0] for s in scenes]
    return {
        "class": mean_se([int(f) // SHAPES_PER_CLASS == i.cls for f, i in zip(reads["shape"], truth)]),
        "shape": mean_se([int(f) == shape_id(i) for f, i in zip(reads["shape"], truth)]),
        "pattern": mean_se([int(f) == i.pattern for f, i in zip(reads["pattern"], truth)]),
        "palette": mean_se([int(f) == i.palette for f, i in zip(reads["palette"], truth)]),
    }


def diagnose(kit: Toolkit, train_ids, held_out, results: Path, log: Callable[[str], None], count: int = 40) -> dict:
    """Both measurements on ``count`` objects, into diagnostics.md and diagnostics.json."""
    report = {
        "word_attention": word_attention(kit, held_out[:count], seed=33),
        "text_control_held_out": text_control(kit, held_out[:count], seed=31),
        "text_control_training": text_control(kit, train_ids[:count], seed=32),
        "count": count,
    }
    (results / "diagnostics.json").write_text(json.dumps(report, indent=1) + "\n")
    (results / "diagnostics.md").write_text(diagnostics_markdown(report))
    log(f"word attention: {report['word_attention']['all']}")
    return report


def diagnostics_markdown(report: dict) -> str:
    def cell(value) -> str:
        return f"{value[0]:.3f} ± {value[1]:.3f}"

    attention = report["word_attention"]
    lines = [
        "# Toy world: diagnostics",
        "",
        "Generated by `python -m toy_world diagnose` on the committed models (see toy_world/diagnose.py); "
        f"{report['count']} held-out objects, mean ± standard error over images.",
        "",
        "## 1. Where does the class word's attention land? (nested adapter bound, weight 1)",
        "",
        "a_s*: the share of a position's attention on the class word, averaged over heads and layers.",
        "",
        "| steps | on the object's cells | on the background | ratio |",
        "|---|---|---|---|",
    ]
    for name, row in attention.items():
        lines.append(f"| {name} | {cell(row['object'])} | {cell(row['background'])} | {row['ratio']:.1f} |")
    lines += [
        "",
        "## 2. Does the base model draw what the words say? (no adapter, describing captions)",
        "",
        "| objects | class | shape | pattern | palette |",
        "|---|---|---|---|---|",
    ]
    for name in ("held_out", "training"):
        row = report[f"text_control_{name}"]
        lines.append(
            f"| {name.replace('_', ' ')} | "
            + " | ".join(cell(row[a]) for a in ("class", "shape", "pattern", "palette"))
            + " |"
        )
    lines += ["", "Chance: class 0.25, shape 0.0625, pattern 0.20, palette 0.125.", ""]
    return "\n".join(lines)
