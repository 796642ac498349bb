"""./dev demo: the two-subject example workflow, run headless through ComfyUI's own executor.

Without real models it runs on small random-weight stand-ins it builds (and says so): the point
is to show the pack loading as a custom node folder, the graph executing, and each subject's word
being found. With ``COMFYUI_PATH`` pointing at a ComfyUI that has SDXL, CLIP ViT-H and the nested
adapters of the workflow (see README), it runs the same workflow on those models instead.

Writes the images and ``report.md`` / ``report.json`` into the output folder (default ./demo_output).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .comfy_env import PACK_ROOT, load_pack, prepare_comfyui, use_folders

log = logging.getLogger("nested_dev.demo")


class Collector(logging.Handler):
    """Keeps the pack's log lines (tokens found, warnings) for the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Nested Attention:"):
            self.lines.append(f"{record.levelname.lower()}: {message[len('Nested Attention: '):]}")


class Server:
    """Collects the executor's events (node start, cached, errors) for the report."""

    client_id = None            # set by the executor from extra_data["client_id"]
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


def stand_in_photos(folder: Path, names: list[str]) -> None:
    """Simple drawn reference "photos" for the random-weight run (no real images are shipped)."""
    from PIL import Image, ImageDraw

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


def tiny_prompt(prompt: dict, base: Path, steps: int) -> tuple[dict, list[str]]:
    """The workflow on stand-ins: loaders replaced by dev nodes, files created, sizes reduced."""
    from . import dev_nodes
    from .tiny_adapters import write_tiny_adapter

    dev_nodes.register()
    adapters, photos = set(), set()
    out = {}
    for node_id, node in prompt.items():
        inputs = dict(node["inputs"])
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            kind, inputs = "NestedDevTinyCheckpoint", {"kind": "sdxl", "seed": 0}
        elif kind == "CLIPVisionLoader":
            kind, inputs = "NestedDevTinyCLIPVision", {"seed": 0}
        elif kind == "LoadNestedAdapter":
            adapters.add(inputs["adapter_name"])
        elif kind == "LoadImage":
            photos.add(inputs["image"])
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs.update(steps=steps)
        out[node_id] = {**node, "class_type": kind, "inputs": inputs}
    for seed, name in enumerate(sorted(adapters), start=1):
        word = "dog" if "pet" in name else "person"
        write_tiny_adapter(base / "models" / "nested_adapters" / name, "sdxl", seed=seed, class_word=word)
    stand_in_photos(base / "input", sorted(photos))
    return out, [f"adapter {a}: random-weight stand-in" for a in sorted(adapters)] + \
        [f"photo {p}: drawn stand-in" for p in sorted(photos)]


def stand_in_ui(workflow: dict, base: Path, steps: int) -> dict:
    """The same stand-ins for a UI-format workflow (for the browser): loaders swapped, files created."""
    from .tiny_adapters import write_tiny_adapter

    out = json.loads(json.dumps(workflow))
    for node in out["nodes"]:
        kind, values = node["type"], node.get("widgets_values", [])
        if kind == "CheckpointLoaderSimple":
            node["type"], node["widgets_values"] = "NestedDevTinyCheckpoint", ["sdxl", 0]
        elif kind == "CLIPVisionLoader":
            node["type"], node["widgets_values"] = "NestedDevTinyCLIPVision", [0]
        elif kind == "LoadNestedAdapter":
            word = "dog" if "pet" in values[0] else "person"
            write_tiny_adapter(base / "models" / "nested_adapters" / values[0], "sdxl", seed=1, class_word=word)
        elif kind == "LoadImage":
            stand_in_photos(base / "input", [values[0]])
        elif kind == "EmptyLatentImage":
            values[0:2] = [64, 64]
        elif kind == "KSampler":
            values[2] = steps
        node["properties"] = {"Node name for S&R": node["type"]} if node["type"] != "Note" else node["properties"]
    return out


def missing_real_files(prompt: dict) -> list[str]:
    import folder_paths

    wanted = {"CheckpointLoaderSimple": ("checkpoints", "ckpt_name"), "CLIPVisionLoader": ("clip_vision", "clip_name"),
              "LoadNestedAdapter": ("nested_adapters", "adapter_name")}
    missing = []
    for node in prompt.values():
        if node["class_type"] in wanted:
            folder, key = wanted[node["class_type"]]
            if folder_paths.get_full_path(folder, node["inputs"][key]) is None:
                missing.append(f"models/{folder}/{node['inputs'][key]}")
        if node["class_type"] == "LoadImage" and not os.path.exists(os.path.join(folder_paths.get_input_directory(),
                                                                                   node["inputs"]["image"])):
            missing.append(f"input/{node['inputs']['image']}")
    return missing


def run(args: argparse.Namespace) -> int:
    real = bool(os.environ.get("COMFYUI_PATH")) and not args.stand_ins
    root = prepare_comfyui(cpu=not real)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    import asyncio

    import comfy.utils
    import execution
    import folder_paths
    import nodes

    from .make_workflows import DEMO_WORKFLOW
    from .workflows import ui_to_api

    if real:
        extra = root / "extra_model_paths.yaml"
        if extra.is_file():
            from utils.extra_config import load_extra_path_config

            load_extra_path_config(str(extra))
    else:
        use_folders(output / "comfy_base")
    folder_paths.set_output_directory(str(output))
    collector = Collector()
    logging.getLogger().addHandler(collector)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    load_pack()

    workflow_path = PACK_ROOT / "workflows" / DEMO_WORKFLOW
    prompt = ui_to_api(json.loads(workflow_path.read_text()))
    notes = []
    if real:
        missing = missing_real_files(prompt)
        if missing:
            log.error("COMFYUI_PATH=%s lacks: %s. Add them (see README) or run with --stand-ins.", root, ", ".join(missing))
            return 2
        mode = f"real models from {root}"
    else:
        prompt, notes = tiny_prompt(prompt, output / "comfy_base", args.steps)
        mode = "RANDOM-WEIGHT STAND-INS (tiny SDXL-shaped UNet, text encoders, CLIP vision and adapters built by the demo)"
    log.info("demo mode: %s", mode)

    steps: list[float] = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append(time.perf_counter()))
    server = Server()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    valid = asyncio.run(execution.validate_prompt("demo", prompt, None))
    if not valid[0]:
        log.error("the workflow did not validate: %s %s", valid[1], valid[3])
        return 1
    started = time.perf_counter()
    executor.execute(prompt, "demo", {"client_id": "demo"}, valid[2])
    elapsed = time.perf_counter() - started
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    ran = [data["node"] for event, data in server.events if event == "executing" and data.get("node")]
    images = sorted(str(p.relative_to(output)) for p in output.glob("*.png"))
    intervals = [b - a for a, b in zip(steps, steps[1:])]
    report = {
        "mode": mode, "workflow": f"workflows/{DEMO_WORKFLOW}", "success": executor.success and not errors,
        "nodes_run": [f"{node_id} {prompt[node_id]['class_type']}" for node_id in ran if node_id in prompt],
        "pack_messages": collector.lines, "stand_ins": notes, "seconds_total": round(elapsed, 2),
        "seconds_per_step": [round(t, 3) for t in intervals], "images": images,
        "errors": [f"node {e['node_id']} ({e['node_type']}): {e['exception_message']}" for e in errors],
    }
    (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (output / "report.md").write_text(markdown(report))
    log.info("wrote %s and %s", output / "report.md", ", ".join(images) or "no images")
    return 0 if report["success"] else 1


def markdown(report: dict) -> str:
    lines = ["# Nested Attention demo", "", f"* mode: **{report['mode']}**", f"* workflow: `{report['workflow']}`",
             f"* success: {report['success']}, {report['seconds_total']} s in all", ""]
    if report["stand_ins"]:
        lines += ["The images are noise-like: the models have random weights. They show that the graph runs, "
                  "not what Nested Attention looks like.", ""] + [f"* {n}" for n in report["stand_ins"]] + [""]
    lines += ["## What the pack reported", ""] + [f"* {m}" for m in report["pack_messages"]] + [""]
    lines += ["## Nodes run (in order)", ""] + [f"* {n}" for n in report["nodes_run"]] + [""]
    steps = report["seconds_per_step"]
    if steps:
        lines += [f"## Sampling: {len(steps) + 1} steps, {sum(steps) / len(steps):.3f} s per step after the first", ""]
    lines += ["## Images", ""] + [f"* {i}" for i in report["images"]] + [""]
    if report["errors"]:
        lines += ["## Errors", ""] + [f"* {e}" for e in report["errors"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(PACK_ROOT / "demo_output"), help="folder for images and the report")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps on the stand-ins")
    parser.add_argument("--stand-ins", action="store_true", help="use the built-in stand-ins even with COMFYUI_PATH set")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
