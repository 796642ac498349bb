"""Why nested attention does not beat a single pooled token in the toy world: the explanations, tested.

On the committed models (``python -m toy_world run``) nested and single-token adapters transfer the
same identity, and neither transfers shape or pattern, only the palette. Each test below is run on
the committed base model, with the pipeline's adapter recipe (pipeline.ADAPTER_SETTINGS) except for
the one thing it changes, and evaluated like the main table (held-out objects, the nodes' own
inference path, the world reader):

1. **Information.** Is the reference's shape and pattern in what the adapter sees at all? A linear
   probe on the frozen image encoder's penultimate features (what Encode Subject passes on), fitted
   on photos of training objects, scored on held-out ones; pooled over patches and per patch.
2. **Recipe.** The same nested and single-token adapters trained 3x as long; and a nested adapter
   whose key/value projections start as each layer's own to_k/to_v (as IP-Adapter initialises its
   to_k_ip/to_v_ip), so that nested values start where the word's value lives.
3. **Capacity without generalisation.** One adapter per held-out object, fitted to photos of that
   object alone (nested, and single-token on the same data): can a per-position value draw the
   pattern and shape that one pooled value cannot, when the encoder does not have to generalise?
4. **Detail the base model has no word for.** The same fitting, for held-out objects whose second
   colour falls on arbitrary cells (a random 4 x 4 mask instead of one of the world's five
   patterns, so the base model never drew it). Scored per cell: of the object's cells at the place
   the caption names, the fraction drawn closest to the intended colour (body, detail or
   background). A single value at the word's positions must rely on the UNet to lay such a
   pattern out; a value per position can paint it.

Differences between two adapters are paired (same references, scenes and seeds), with the standard
error of the per-image difference.

    python -m toy_world explain    # about 55 minutes on 2 CPU cores; results/explain.md and .json
    python -m toy_world explain --tests detail    # one test; the others' numbers are kept
"""

from __future__ import annotations

import dataclasses
import functools
import random
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nested_attention.nodes.adapter_runtime import load_adapter
from nested_attention.nodes.encode import clip_features

from .baselines import PATCH_CLASSES
from .evaluate import Toolkit, mean_se, personalised, sample, single_hits, single_subject_jobs
from .figures import cell
from .models import build_clip_vision
from .pipeline import export_training_data, train_adapter
from .reader import SINGLE, read, shape_id
from .world import (
    BACKGROUNDS,
    BLOCK,
    CELL,
    GRID,
    PALETTES,
    PATTERNS,
    POSITIONS,
    SHAPES_PER_CLASS,
    Identity,
    Scene,
    cells,
    object_mask,
    pattern_cells,
    shape_cells,
    subject_photo,
)

Log = Callable[[str], None]
ATTRIBUTES = ("identity", "shape", "pattern", "palette", "prompt", "class")
TESTS = ("probe", "recipe", "fitted", "detail")


def probe(train_ids: Sequence[Identity], held_out: Sequence[Identity], photos: int = 3, seed: int = 5) -> dict:
    """Held-out accuracy of linear probes for shape, pattern and palette on the image encoder's
    features, mean-pooled over patches and per patch (flattened); with chance levels."""
    vision = build_clip_vision()
    rng = random.Random(seed)

    def features(identities: Sequence[Identity]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for identity in identities:
            for _ in range(photos):
                with torch.no_grad():
                    found = clip_features(vision, torch.from_numpy(subject_photo(identity, rng))[None])
                rows.append(found[0].float())
                labels.append((shape_id(identity), identity.pattern, identity.palette))
        return torch.stack(rows), torch.tensor(labels)

    train_x, train_y = features(train_ids)
    test_x, test_y = features(held_out)
    report = {}
    for pooling in ("pooled", "per patch"):
        a, b = (train_x.mean(1), test_x.mean(1)) if pooling == "pooled" else (train_x.flatten(1), test_x.flatten(1))
        centre, spread = a.mean(0), a.std(0) + 1e-6
        a, b = (a - centre) / spread, (b - centre) / spread
        for column, (name, classes) in enumerate(
            (("shape", 4 * SHAPES_PER_CLASS), ("pattern", len(PATTERNS)), ("palette", len(PALETTES)))
        ):
            torch.manual_seed(seed)
            linear = torch.nn.Linear(a.shape[1], classes)
            optimiser = torch.optim.Adam(linear.parameters(), 1e-2, weight_decay=1e-3)
            for _ in range(300):
                optimiser.zero_grad()
                F.cross_entropy(linear(a), train_y[:, column]).backward()
                optimiser.step()
            with torch.no_grad():
                hits = (linear(b).argmax(1) == test_y[:, column]).double().numpy()
            report[f"{pooling}/{name}"] = {"held_out": mean_se(hits), "chance": 1 / classes}
    return report


def image_scores(kit: Toolkit, method: str, adapters: dict[Identity, Path], jobs: Sequence[tuple]) -> dict:
    """Per-image scores of ``method`` with each job's identity's adapter file."""
    loaded = {identity: load_adapter(str(path), path.name) for identity, path in set(adapters.items())}
    images = []
    for identity, photo, scene, seed in jobs:
        with_adapter = dataclasses.replace(kit, adapters={method: loaded[identity]})
        images.append(sample(kit, personalised(with_adapter, method, [(photo, identity.word)]), scene.caption, seed))
    reads = read(kit.reader, torch.stack(images), SINGLE)
    return single_hits(reads, [j[0] for j in jobs], [j[2] for j in jobs])


def summary(hits: dict, versus: "dict | None" = None) -> dict:
    """(mean, se) per attribute; with ``versus``, also the paired identity difference."""
    row = {name: mean_se(hits[name]) for name in ATTRIBUTES}
    row["n"] = len(hits["identity"])
    if versus is not None:
        row["identity_minus_single"] = mean_se(np.subtract(hits["identity"], versus["identity"]))
    return row


def explain(
    kit: Toolkit,
    weights: Path,
    train_ids: Sequence[Identity],
    held_out: Sequence[Identity],
    settings: dict,
    seed: int,
    log: Log,
    tests: Sequence[str] = TESTS,
) -> dict:
    """The tests named in ``tests``; returns their numbers (see the module docstring)."""
    report: dict = {"settings": settings}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if "probe" in tests:
            report["probe"] = probe(train_ids, held_out)
            log(f"probe: {report['probe']}")
        if "recipe" in tests:
            report["recipe"] = recipe(kit, weights, train_ids, held_out, settings, seed, log, scratch)
        if "fitted" in tests:
            report["fitted"] = fitted(kit, weights, held_out, settings, seed, log, scratch)
        if "detail" in tests:
            report["detail"] = detail(kit, weights, held_out, settings, seed, log, scratch)
    return report


def recipe(kit, weights, train_ids, held_out, settings: dict, seed: int, log: Log, scratch: Path) -> dict:
    """Test 2: longer training, and projections started from the UNet's."""
    eval_jobs = single_subject_jobs(held_out[: settings["eval_identities"]], settings["eval_prompts"], seed + 7)
    data = export_training_data(scratch / "data", train_ids, settings["photos_per_identity"], seed)
    longer = dict(settings, adapter_steps=3 * settings["adapter_steps"])
    variants = {
        "nested, 3x steps": ("nested", longer, {}),
        "single-token, 3x steps": ("single-token", longer, {}),
        "nested, projections from the UNet": ("nested", settings, {"init_from_unet": True}),
    }
    recipe_hits = {}
    for name, (method, budget, overrides) in variants.items():
        place = scratch / f"recipe_{len(recipe_hits)}"
        path = train_adapter(
            method, PATCH_CLASSES[method], data, weights, place, budget, seed, log,
            target=place / "adapter.safetensors", **overrides,
        )  # fmt: skip
        recipe_hits[name] = image_scores(kit, method, {j[0]: path for j in eval_jobs}, eval_jobs)
        log(f"{name}: identity {mean_se(recipe_hits[name]['identity'])}")
    return {
        "nested, 3x steps": summary(recipe_hits["nested, 3x steps"], recipe_hits["single-token, 3x steps"]),
        "single-token, 3x steps": summary(recipe_hits["single-token, 3x steps"]),
        "nested, projections from the UNet": summary(recipe_hits["nested, projections from the UNet"]),
    }


def fit_one(method: str, folder: Path, weights: Path, settings: dict, seed: int, place: Path) -> Path:
    """An adapter of ``method`` trained on one object's scenes in ``folder`` alone."""
    return train_adapter(
        method, PATCH_CLASSES[method], folder, weights, place / "run",
        dict(settings, adapter_steps=settings["fit_steps"]), seed, lambda message: None,
        target=place / "adapter.safetensors",
    )  # fmt: skip


def fitted(kit, weights, held_out, settings: dict, seed: int, log: Log, scratch: Path) -> dict:
    """Test 3: one adapter per held-out object, fitted to that object alone."""
    objects = held_out[: settings["fit_identities"]]
    fit_jobs = single_subject_jobs(objects, settings["fit_prompts"], seed + 13)
    fit_hits = {}
    for method in ("nested", "single-token"):
        files = {}
        for number, identity in enumerate(objects):
            place = scratch / f"fit_{method}_{number}"
            folder = export_training_data(place / "data", [identity], settings["fit_photos"], seed)
            files[identity] = fit_one(method, folder, weights, settings, seed, place)
        fit_hits[method] = image_scores(kit, method, files, fit_jobs)
        log(f"fitted {method}: identity {mean_se(fit_hits[method]['identity'])}")
    return {
        "nested": summary(fit_hits["nested"], fit_hits["single-token"]),
        "single-token": summary(fit_hits["single-token"]),
    }


def detail_mask(rng: random.Random) -> np.ndarray:
    """A random 4 x 4 mask of detail cells, none of the world's five patterns."""
    while True:
        mask = np.array([[rng.random() < 0.5 for _ in range(BLOCK)] for _ in range(BLOCK)])
        if not any((mask == pattern_cells(name)).all() for name in PATTERNS):
            return mask


def detailed_cells(scene: Scene, mask: np.ndarray) -> np.ndarray:
    """The scene's cells [8, 8, 3] with its object's second colour on ``mask``'s cells."""
    grid = cells(scene)
    body, second = (np.array(c, dtype=np.float32) / 255 for c in PALETTES[scene.identities[0].palette])
    row, column = scene.places[0]
    inside = object_mask(scene)
    for r in range(BLOCK):
        for c in range(BLOCK):
            if inside[row + r, column + c]:
                grid[row + r, column + c] = second if mask[r, c] else body
    return grid


def detailed_image(scene: Scene, mask: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(detailed_cells(scene, mask), CELL, axis=0), CELL, axis=1)


def cell_hits(image: torch.Tensor, scene: Scene, mask: np.ndarray) -> float:
    """Of the object's cells at the caption's place, the fraction whose drawn colour (the cell's
    mean) is nearest the intended one among the body, detail and background colours."""
    drawn = image.reshape(GRID, CELL, GRID, CELL, 3).mean((1, 3)).numpy()
    body, second = (np.array(c, dtype=np.float32) / 255 for c in PALETTES[scene.identities[0].palette])
    background = np.array(BACKGROUNDS[scene.background], dtype=np.float32) / 255
    row, column = scene.places[0]
    inside = object_mask(scene)
    hits = []
    for r in range(BLOCK):
        for c in range(BLOCK):
            if inside[row + r, column + c]:
                candidates = np.stack([body, second, background])
                nearest = int(np.argmin(((candidates - drawn[row + r, column + c]) ** 2).sum(-1)))
                hits.append(nearest == (1 if mask[r, c] else 0))
    return float(np.mean(hits))


def detail(kit, weights, held_out, settings: dict, seed: int, log: Log, scratch: Path) -> dict:
    """Test 4: fitted adapters for objects with arbitrary detail cells; per-cell colour accuracy."""
    rng = random.Random(seed + 17)
    objects = [(identity, detail_mask(rng)) for identity in held_out[: settings["fit_identities"]]]
    jobs = []  # (object number, reference photo, scene, sampling seed)
    for number, (identity, mask) in enumerate(objects):
        photo = detailed_image(Scene((identity,), rng.choice(list(BACKGROUNDS)), "center"), mask)
        for _ in range(settings["fit_prompts"]):
            scene = Scene((identity,), rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)))
            jobs.append((number, photo, scene, rng.randrange(2**31)))
    scores: dict[str, list[float]] = {}
    for method in ("nested", "single-token"):
        loaded = []
        for number, (identity, mask) in enumerate(objects):
            place = scratch / f"detail_{method}_{number}"
            draw = functools.partial(detailed_image, mask=mask)
            folder = export_training_data(place / "data", [identity], settings["fit_photos"], seed, draw)
            path = fit_one(method, folder, weights, settings, seed, place)
            loaded.append(load_adapter(str(path), path.name))
        scores[method] = []
        for number, photo, scene, sampling_seed in jobs:
            identity, mask = objects[number]
            with_adapter = dataclasses.replace(kit, adapters={method: loaded[number]})
            model = personalised(with_adapter, method, [(photo, identity.word)])
            scores[method].append(cell_hits(sample(kit, model, scene.caption, sampling_seed), scene, mask))
        log(f"detail, fitted {method}: cells {mean_se(scores[method])}")
    # every cell in the body colour: right on the cells the mask leaves to the body
    floor = [float(1 - objects[n][1][shape_cells(objects[n][0])].mean()) for n, *_ in jobs]
    return {
        "nested": {"cells": mean_se(scores["nested"]), "n": len(jobs)},
        "single-token": {"cells": mean_se(scores["single-token"]), "n": len(jobs)},
        "nested_minus_single": mean_se(np.subtract(scores["nested"], scores["single-token"])),
        "one_colour": mean_se(floor),
    }


def markdown(report: dict, committed: dict) -> str:
    """explain.md: the tests in ``report`` beside the committed adapters' main-table numbers
    (``committed``: the run's results.json)."""

    lines = [
        "# Toy world: why nested attention does not beat a single token here",
        "",
        "Generated by `python -m toy_world explain` (see toy_world/explain.py) on the committed base model; "
        "held-out objects; mean ± standard error over images; differences paired over the same images.",
        "",
    ]
    if "probe" in report:
        lines += [
            "## 1. Is the identity in the image encoder's features? (linear probes, held-out objects)",
            "",
            "| features | shape | pattern | palette |",
            "|---|---|---|---|",
        ]
        for pooling in ("pooled", "per patch"):
            row = [report["probe"][f"{pooling}/{name}"] for name in ("shape", "pattern", "palette")]
            lines.append(f"| {pooling} | " + " | ".join(f"{cell(r['held_out'])}" for r in row) + " |")
        chance = [report["probe"][f"pooled/{name}"]["chance"] for name in ("shape", "pattern", "palette")]
        lines += ["| chance | " + " | ".join(f"{c:.3f}" for c in chance) + " |", ""]

    header = (
        "| adapter | identity | shape | pattern | palette | prompt alignment | class "
        "| nested − single-token identity | images |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|"

    def rows(table: dict) -> list[str]:
        out = []
        for name, row in table.items():
            difference = cell(row["identity_minus_single"]) if "identity_minus_single" in row else ""
            values = " | ".join(cell(row[a]) for a in ATTRIBUTES)
            out.append(f"| {name} | {values} | {difference} | {row['n']} |")
        return out

    settings = report["settings"]
    if "recipe" in report:
        steps = committed["settings"]["adapter_steps"]
        main = committed["single_subject"]
        lines += ["## 2. The recipe (all objects' data, as in the main table)", "", header, rule]
        lines += rows({f"{m} (committed, {steps} steps)": main[f"{m}@1.0"] for m in ("nested", "single-token")})
        lines += rows(report["recipe"]) + [""]
    fitting = (
        f"{settings['fit_identities']} held-out objects, one adapter each per method ({settings['fit_steps']} "
        f"steps on {settings['fit_photos']} scenes of that object alone), {settings['fit_prompts']} new scenes each."
    )
    if "fitted" in report:
        lines += ["## 3. Fitted to one object each (capacity without generalisation)", "", fitting, "", header, rule]
        lines += rows(report["fitted"]) + [""]
    if "detail" in report:
        found = report["detail"]
        lines += [
            "## 4. Detail the base model has no word for (fitted, arbitrary detail cells)",
            "",
            fitting + " Each object's second colour on a random 4 x 4 mask of cells, none of the world's "
            "patterns. Cells: of the object's cells at the caption's place, the fraction drawn nearest the "
            "intended colour (body, detail or background).",
            "",
            "| adapter | cells right | images |",
            "|---|---|---|",
            f"| nested | {cell(found['nested']['cells'])} | {found['nested']['n']} |",
            f"| single-token | {cell(found['single-token']['cells'])} | {found['single-token']['n']} |",
            f"| nested − single-token (paired) | {cell(found['nested_minus_single'])} | |",
            f"| every cell in the body colour (for reference) | {cell(found['one_colour'])} | |",
            "",
        ]
    return "\n".join(lines)
