"""./dev demo: the pack's example workflows, run headless through ComfyUI's own executor.

By default it runs the toy world's workflows (one subject, two subjects, attention maps) on the
small models this project trained and committed (toy_world/): a real personalisation of held-out
creatures at 64 x 64 pixels. With ``COMFYUI_PATH`` pointing at a ComfyUI that has SDXL, CLIP ViT-H
and the nested adapters of the two-subject workflow (see README) it runs that workflow on them.
``--random`` runs the two-subject workflow on random-weight stand-ins instead (and says so).

Writes the images, map previews and ``report.md`` / ``report.json`` into the output folder
(default ./demo_output).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from toy_world import WEIGHTS
from toy_world.world import split_identities, subject_photo

from .comfy_env import PACK_ROOT, load_pack, prepare_comfyui, use_folders
from .make_workflows import DEMO_WORKFLOW, TOY_ADAPTER, TOY_PHOTOS, TOY_WORKFLOWS
from .workflows import ui_to_api

log = logging.getLogger("nested_dev.demo")


class Collector(logging.Handler):
    """Keeps the pack's log lines (tokens found, warnings) for the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Nested Attention:"):
            self.lines.append(f"{record.levelname.lower()}: {message[len('Nested Attention: ') :]}")


def stand_in_photos(folder: Path, names: list[str]) -> None:
    """Simple drawn reference "photos" for the random-weight run (no real images are shipped)."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    palette = [((230, 190, 160), (60, 40, 30)), ((200, 150, 90), (90, 60, 30)), ((120, 160, 220), (20, 20, 60))]
    for index, name in enumerate(names):
        skin, hair = palette[index % len(palette)]
        image = Image.new("RGB", (256, 256), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        draw.ellipse((58, 48, 198, 218), fill=skin)
        draw.pieslice((52, 30, 204, 170), 180, 360, fill=hair)
        draw.ellipse((95, 110, 115, 130), fill=(30, 30, 30))
        draw.ellipse((141, 110, 161, 130), fill=(30, 30, 30))
        draw.arc((100, 140, 156, 185), 20, 160, fill=(120, 40, 40), width=5)
        image.save(folder / name)


def stand_in_ui(workflow: dict, base: Path, steps: int) -> tuple[dict, list[str]]:
    """The workflow (UI format) on stand-ins: loaders swapped for dev nodes, adapter files and
    photos created, sizes reduced; and a note per stand-in."""
    from .tiny_adapters import write_tiny_adapter

    out = json.loads(json.dumps(workflow))
    adapters = sorted({n["widgets_values"][0] for n in out["nodes"] if n["type"] == "LoadNestedAdapter"})
    photos = sorted({n["widgets_values"][0] for n in out["nodes"] if n["type"] == "LoadImage"})
    for node in out["nodes"]:
        kind, values = node["type"], node.get("widgets_values", [])
        if kind == "CheckpointLoaderSimple":
            node["type"], node["widgets_values"] = "NestedDevTinyCheckpoint", ["sdxl", 0]
        elif kind == "CLIPVisionLoader":
            node["type"], node["widgets_values"] = "NestedDevTinyCLIPVision", [0]
        elif kind == "EmptyLatentImage":
            values[0:2] = [64, 64]
        elif kind == "KSampler":
            values[2] = steps
        node["properties"] = {"Node name for S&R": node["type"]} if node["type"] != "Note" else node["properties"]
    for seed, name in enumerate(adapters, start=1):
        word = "dog" if "pet" in name else "person"
        write_tiny_adapter(base / "models" / "nested_adapters" / name, "sdxl", seed=seed, class_word=word)
    stand_in_photos(base / "input", photos)
    notes = [f"adapter {a}: random-weight stand-in" for a in adapters] + [f"photo {p}: drawn stand-in" for p in photos]
    return out, notes


def missing_real_files(prompt: dict) -> list[str]:
    import folder_paths

    wanted = {
        "CheckpointLoaderSimple": ("checkpoints", "ckpt_name"),
        "CLIPVisionLoader": ("clip_vision", "clip_name"),
        "LoadNestedAdapter": ("nested_adapters", "adapter_name"),
    }
    missing = []
    for node in prompt.values():
        if node["class_type"] in wanted:
            folder, key = wanted[node["class_type"]]
            if folder_paths.get_full_path(folder, node["inputs"][key]) is None:
                missing.append(f"models/{folder}/{node['inputs'][key]}")
        if node["class_type"] == "LoadImage" and not os.path.exists(
            os.path.join(folder_paths.get_input_directory(), node["inputs"]["image"])
        ):
            missing.append(f"input/{node['inputs']['image']}")
    return missing


def toy_setup(base: Path) -> list[str]:
    """Files the toy workflows name: the trained nested adapter and photos of two held-out objects,
    a creature and a robot (the held-out list takes the classes in turn)."""
    import random

    folder = base / "models" / "nested_adapters"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WEIGHTS / "adapter_nested.safetensors", folder / TOY_ADAPTER)
    _, held_out = split_identities()
    rng = random.Random(2024)
    (base / "input").mkdir(parents=True, exist_ok=True)
    notes = []
    for name, identity, word in zip(TOY_PHOTOS, held_out[:2], ("creature", "robot")):
        assert identity.word == word, (identity, word)  # what the toy workflows bind them to
        Image.fromarray((subject_photo(identity, rng) * 255).astype(np.uint8)).save(base / "input" / name)
        notes.append(f"photo {name}: held-out {identity.describe()} (never seen in training)")
    return notes


def plan(
    args: argparse.Namespace, real: bool, root: Path, output: Path
) -> tuple[str, list[tuple[Path, Callable]], list[str]]:
    """(mode, [(workflow file, prompt transform)], notes) for real models, the toy world or stand-ins."""

    user_workflow = PACK_ROOT / "workflows" / DEMO_WORKFLOW
    if real:
        return f"real models from {root}", [(user_workflow, lambda p: p)], []
    base = output / "comfy_base"
    if (WEIGHTS / "adapter_nested.safetensors").is_file() and not args.random:
        notes = toy_setup(base)
        folder = PACK_ROOT / "toy_world" / "workflows"
        return (
            (
                "TOY WORLD: the small models this project trained on its own procedural world (toy_world/); "
                "a real personalisation at 64 x 64 pixels, not SDXL"
            ),
            [(folder / n, lambda p: p) for n in TOY_WORKFLOWS],
            notes,
        )
    collected: list[str] = []

    def stand_ins(workflow: dict) -> dict:
        workflow, notes = stand_in_ui(workflow, base, args.steps)
        collected.extend(notes)
        return workflow

    return (
        "RANDOM-WEIGHT STAND-INS (tiny SDXL-shaped UNet, text encoders, CLIP vision and adapters built by the demo)",
        [(user_workflow, stand_ins)],
        collected,
    )


def run(args: argparse.Namespace) -> int:
    real = bool(os.environ.get("COMFYUI_PATH")) and not args.stand_ins
    root = prepare_comfyui(cpu=not real)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    import asyncio

    import comfy.utils
    import folder_paths

    import nodes

    from . import dev_nodes

    if real:
        extra = root / "extra_model_paths.yaml"
        if extra.is_file():
            from utils.extra_config import load_extra_path_config

            load_extra_path_config(str(extra))
    else:
        use_folders(output / "comfy_base")
    folder_paths.set_output_directory(str(output))
    folder_paths.set_temp_directory(str(output / "previews"))
    collector = Collector()
    logging.getLogger().addHandler(collector)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    load_pack()
    dev_nodes.register()
    mode, runs, notes = plan(args, real, root, output)
    log.info("demo mode: %s", mode)
    steps: list[float] = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: steps.append(time.perf_counter())
    )
    report = {"mode": mode, "stand_ins": notes, "workflows": []}
    for workflow, transform in runs:
        prompt = ui_to_api(transform(json.loads(workflow.read_text())))
        if real and (missing := missing_real_files(prompt)):
            log.error(
                "COMFYUI_PATH=%s lacks: %s. Add them (see README) or run with --stand-ins.", root, ", ".join(missing)
            )
            return 2
        collector.lines.clear()
        steps.clear()
        report["workflows"].append(execute(prompt, workflow, output, collector, steps))
    report["success"] = all(w["success"] for w in report["workflows"])
    (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (output / "report.md").write_text(markdown(report))
    log.info("wrote %s", output / "report.md")
    return 0 if report["success"] else 1


def execute(prompt: dict, workflow: Path, output: Path, collector: Collector, steps: list[float]) -> dict:
    """Run one API prompt through ComfyUI's executor; what ran, what the pack said, what it wrote."""
    from .headless import execute as run_prompt

    before = set(output.rglob("*.png"))
    started = time.perf_counter()
    try:
        executor, server = run_prompt(prompt, "demo", client_id="demo")
    except ValueError as error:
        return {"workflow": str(workflow.relative_to(PACK_ROOT)), "success": False, "errors": [str(error)]}
    elapsed = time.perf_counter() - started
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    ran = [data["node"] for event, data in server.events if event == "executing" and data.get("node")]
    intervals = [b - a for a, b in zip(steps, steps[1:])]
    return {
        "workflow": str(workflow.relative_to(PACK_ROOT)),
        "success": executor.success and not errors,
        "nodes_run": [f"{node_id} {prompt[node_id]['class_type']}" for node_id in ran if node_id in prompt],
        "pack_messages": list(collector.lines),
        "seconds_total": round(elapsed, 2),
        "seconds_per_step": [round(t, 3) for t in intervals],
        "images": sorted(
            str(p.relative_to(output)) for p in set(output.rglob("*.png")) - before if "comfy_base" not in p.parts
        ),
        "errors": [f"node {e['node_id']} ({e['node_type']}): {e['exception_message']}" for e in errors],
    }


def markdown(report: dict) -> str:
    lines = ["# Nested Attention demo", "", f"* mode: **{report['mode']}**", f"* success: {report['success']}", ""]
    if report["mode"].startswith("RANDOM"):
        lines += [
            "The images are noise-like: the models have random weights. They show that the graph runs, "
            "not what Nested Attention looks like.",
            "",
        ]
    lines += [f"* {n}" for n in report["stand_ins"]] + [""]
    for run in report["workflows"]:
        lines += [f"## {run['workflow']}", "", f"success: {run['success']}, {run.get('seconds_total', 0)} s", ""]
        lines += ["What the pack reported:", ""] + [f"* {m}" for m in run.get("pack_messages", [])] + [""]
        lines += ["Nodes run, in order: " + ", ".join(run.get("nodes_run", [])), ""]
        steps = run.get("seconds_per_step", [])
        if steps:
            lines += [f"Sampling: {sum(steps) / len(steps):.3f} s per step.", ""]
        lines += ["Images: " + ", ".join(f"`{i}`" for i in run.get("images", [])), ""]
        if run.get("errors"):
            lines += ["Errors:", ""] + [f"* {e}" for e in run["errors"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(PACK_ROOT / "demo_output"), help="folder for images and the report")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps on the stand-ins")
    parser.add_argument(
        "--stand-ins", action="store_true", help="use the toy world (or stand-ins) even with COMFYUI_PATH set"
    )
    parser.add_argument("--random", action="store_true", help="random-weight stand-ins instead of the toy world")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
