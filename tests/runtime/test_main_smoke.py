"""ComfyUI's own main.py starts with the pack in custom_nodes, reports no import failure for it, and finds
the front-end packages its requirements.txt lists (installed by dev-requirements.txt)."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import PackageNotFoundError, version

import pytest

from nested_attention.nested_train.comfy_runtime import locate_comfyui
from nested_dev.comfy_server import base_directory, command, environment, missing_package_errors, runnable_root


def test_main_py_quick_test_loads_the_pack(tmp_path):
    pytest.importorskip("aiohttp", reason="main.py needs the server packages of dev-requirements.txt")
    result = subprocess.run(
        command(base_directory(tmp_path), "--quick-test-for-ci"),
        cwd=runnable_root(tmp_path),
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    pack_lines = [line for line in log.splitlines() if "custom_nodes/nested-attention" in line]
    assert pack_lines, log[-3000:]
    assert not any("IMPORT FAILED" in line for line in pack_lines), "\n".join(pack_lines)
    # main.py sets up the front end's routes (templates, embedded docs) before the quick test exits.
    assert missing_package_errors(log) == [], "ComfyUI reports missing packages: add them to dev-requirements.txt"


def test_the_front_end_packages_comfyui_pins_are_installed():
    requirements = (locate_comfyui() / "requirements.txt").read_text()
    pins = re.findall(r"^(comfyui-[\w-]+)==(\S+)", requirements, flags=re.MULTILINE)
    assert {name for name, _ in pins} >= {"comfyui-frontend-package", "comfyui-workflow-templates"}
    for name, wanted in pins:
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        assert installed == wanted, f"ComfyUI's requirements.txt pins {name}=={wanted}; installed: {installed}"
