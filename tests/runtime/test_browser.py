"""The web extension in a real browser: ComfyUI's server and front end, headless Debian Chromium.

Runs against the front end pinned in dev-requirements.txt and the newest one (NEWEST_FRONTEND, from a
cache under .cache/frontend that ./dev or this test fills), each with the classic canvas renderer and
with Nodes 2.0 (Vue nodes): one server per front end, both renderers in one browser session. The
browser script (browser/maps_and_warnings.mjs) loads a two-subject maps workflow (loaders swapped for
the tiny stand-ins), runs it, and checks what a user sees: the highlighted subject words, each Apply
node's status line, the maps view (clicking the generated image moves the source heat; the second
subject's view shows the second reference photo), the red warning of a word no prompt contains (after
typing it, and after deleting the prompt node; gone when the workflow is loaded again), and the same
inside a subgraph. It also opens a shipped workflow as a new user would and reads the missing-models
dialog: every file with a public URL offered for download, in its folder. Screenshots go to
test_artifacts/browser_<front end>_<renderer>_*.png and browser_<front end>_missing_models.png.

Skipped when Chromium, node or playwright-core is missing (./dev test installs them where it can);
failed instead when NESTED_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Optional

import pytest

from nested_dev.comfy_env import PACK_ROOT
from nested_dev.comfy_server import NEWEST_FRONTEND, frontend_root, missing_package_errors

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
ARTIFACTS = PACK_ROOT / "test_artifacts"
REQUIRE = os.environ.get("NESTED_REQUIRE_BROWSER") == "1"
PINNED = version("comfyui-frontend-package")
MODES = ("classic", "vue")
STEPS = ("maps", "warning", "subgraph")
#: The shipped workflow whose missing models the browser reads: it names an IP-Adapter-Plus file, which
#: goes in the pack's own folder models/nested_adapters.
MODELS_WORKFLOW = "ip_adapter_plus_as_nested_adapter.json"


def missing_browser() -> Optional[str]:
    """Why the browser test cannot run here, or None."""
    if shutil.which("chromium") is None and "CHROMIUM" not in os.environ:
        return "Debian's chromium is not installed"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (cd tests/runtime/browser && npm install)"
    return None


def unavailable(reason: str) -> None:
    """Skip, or fail when the environment requires the browser test (CI must not pass without it)."""
    if REQUIRE:
        pytest.fail(f"NESTED_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}")
    pytest.skip(reason)


def downloadable_models(path: Path) -> list[list[str]]:
    """[file name, folder] of each model file the workflow's loaders name that has a public URL
    (nested_dev.model_sources): what the missing-models dialog must offer to download."""
    from nested_dev.model_sources import BY_NAME, LOADERS

    nodes = json.loads(path.read_text())["nodes"]
    models = [BY_NAME[n["widgets_values"][0]] for n in nodes if n["type"] in LOADERS]
    return [[m.name, m.folder] for m in models if m.url]


def maps_workflow(base: Path) -> dict:
    """The attention-maps example with a second subject (the dog, its own reference photo), on stand-ins."""
    from nested_dev.demo import stand_in_ui
    from nested_dev.make_workflows import PETS, attention_maps

    workflow = attention_maps(
        others=((PETS, "dog.png", "dog"),), text="a photo of a person and a dog on a stage, spotlight"
    )
    return stand_in_ui(workflow, base, steps=3)[0]


@pytest.mark.parametrize("front_end", [PINNED, NEWEST_FRONTEND])
def test_extension_in_chromium_classic_and_nodes_2(pack, tmp_path, front_end):
    reason = missing_browser()
    if reason:
        unavailable(reason)
    pytest.importorskip("aiohttp", reason="the server needs the packages of dev-requirements.txt")
    from nested_dev.comfy_server import Server

    root = None
    if front_end != PINNED:
        root = frontend_root(front_end)
        if root is None:
            unavailable(f"comfyui-frontend-package=={front_end} could not be installed into .cache/frontend")
    server = Server(tmp_path, dev_nodes=True, front_end_root=root)
    workflow_path = tmp_path / "workflow.json"
    workflow_path.write_text(json.dumps(maps_workflow(server.base)))
    ARTIFACTS.mkdir(exist_ok=True)
    prefix = ARTIFACTS / f"browser_{front_end}"
    for old in ARTIFACTS.glob(f"{prefix.name}_*.png"):
        old.unlink()
    config = tmp_path / "browser.json"
    started = time.monotonic()
    try:
        server.start()
        config.write_text(
            json.dumps(
                {
                    "url": server.url,
                    "workflow": str(workflow_path),
                    "prefix": str(prefix),
                    "modes": list(MODES),
                    # A shipped workflow as a new user opens it: none of its models is on the server.
                    "modelsWorkflow": str(PACK_ROOT / "workflows" / MODELS_WORKFLOW),
                    "models": downloadable_models(PACK_ROOT / "workflows" / MODELS_WORKFLOW),  # [name, folder]
                }
            )
        )
        result = subprocess.run(
            ["node", str(BROWSER_DIR / "maps_and_warnings.mjs"), str(config)],
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        server.stop()
    assert server.process.poll() is not None, "the server must be stopped"
    log = server.log()
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script:\n{result.stdout}\n{result.stderr}\n{log[-3000:]}"
    summary = json.loads(lines[-1])
    assert summary["ok"], f"{json.dumps(summary, indent=1)}\n{log[-3000:]}"
    models, *runs = summary["results"]
    # Every declared file is offered for download in its folder (nested_adapters, not "Unknown").
    expected = downloadable_models(PACK_ROOT / "workflows" / MODELS_WORKFLOW)
    assert len(expected) == 3 and models["rows"] == [f"{folder} / {name}" for name, folder in expected]
    assert [r["mode"] for r in runs] == list(MODES)
    for run in runs:
        assert (run["vueNodes"] > 0) == (run["mode"] == "vue")
        assert re.fullmatch(r"'person'.*point \(0\.25, 0\.50\).* reference photo 1", run["personCaption"])
        assert re.fullmatch(r"'dog'.*point \(0\.25, 0\.50\).* reference photo 2", run["dogCaption"])
        assert run["warning"] == "⚠ 'giraffe' is in no Nested Text Encode prompt of the sampler"
        assert run["removedAndRestored"]
        assert run["subgraphWarning"] == "⚠ 'zebra' is in no Nested Text Encode prompt of the sampler"
        for step in STEPS:
            assert Path(f"{prefix}_{run['mode']}_{step}.png").is_file()
    assert Path(f"{prefix}_missing_models.png").is_file()
    assert missing_package_errors(log) == [], "the server reported missing packages"
    logging.getLogger(__name__).info("front end %s: both renderers in %.0f s", front_end, time.monotonic() - started)


def test_extension_reads_no_deprecated_or_private_graph_fields():
    """The extension reads the graph through app.graphToPrompt and public node/graph methods only."""
    source = (PACK_ROOT / "web" / "nested_attention.js").read_text()
    code = "\n".join(line.split("//")[0] for line in source.splitlines())  # comments may name them
    for pattern in (r"\._nodes\b", r"\.links\b", r"\.link\b", r"\bsetInterval\(", r"onDrawForeground"):
        assert not re.search(pattern, code), f"web/nested_attention.js uses {pattern}"
