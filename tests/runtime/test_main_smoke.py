"""ComfyUI's own main.py starts with the pack in custom_nodes and reports no import failure for it."""

from __future__ import annotations

import subprocess

import pytest

from nested_dev.comfy_server import base_directory, command, environment, runnable_root


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
