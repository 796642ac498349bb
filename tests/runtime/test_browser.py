"""The web extension in a real browser: ComfyUI's server and front end, headless Debian Chromium.

Loads the attention-maps example workflow (loaders swapped for the tiny stand-ins), runs it,
clicks the generated image in the Nested Attention Maps node and checks the source overlay, the
highlighted subject word in the prompt, and the warning of an Apply node whose word is in no
prompt. The screenshot is kept in test_artifacts/browser_maps.png. Skipped when Chromium or
playwright-core is missing (./dev test installs them where it can).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nested_dev.comfy_env import PACK_ROOT

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
ARTIFACTS = PACK_ROOT / "test_artifacts"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
@pytest.mark.skipif(
    not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir() or shutil.which("node") is None,
    reason="playwright-core is not installed (cd tests/runtime/browser && npm install)",
)
def test_maps_view_highlights_and_warning_in_chromium(pack, tmp_path):
    pytest.importorskip("aiohttp", reason="the server needs the packages of dev-requirements.txt")
    from nested_dev.comfy_server import Server
    from nested_dev.demo import stand_in_ui

    server = Server(tmp_path, dev_nodes=True)
    workflow, _ = stand_in_ui(
        json.loads((PACK_ROOT / "workflows" / "attention_maps.json").read_text()), server.base, steps=3
    )
    workflow_path = tmp_path / "workflow.json"
    workflow_path.write_text(json.dumps(workflow))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser_maps.png"
    try:
        server.start()
        result = subprocess.run(
            ["node", str(BROWSER_DIR / "maps_and_warnings.mjs"), server.url, str(workflow_path), str(screenshot)],
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        server.stop()
    assert server.process.poll() is not None, "the server must be stopped"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script:\n{result.stdout}\n{result.stderr}\n{server.log()[-3000:]}"
    summary = json.loads(lines[-1])
    assert summary["ok"], f"{summary}\n{server.log()[-3000:]}"
    assert summary["point"] == "0.250,0.500" and summary["pointWidget"] == 0.25
    assert summary["before"] is None and "giraffe" in summary["warning"]
    assert screenshot.is_file()
