"""ComfyUI's own main.py starts with the pack in custom_nodes and reports no import failure for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import COMFY_ROOT
from nested_dev.comfy_env import PACK_ROOT


def test_main_py_quick_test_loads_the_pack(tmp_path):
    pytest.importorskip("aiohttp", reason="main.py needs the server packages of dev-requirements.txt")
    root = COMFY_ROOT
    if "site-packages" in str(root):        # the PyPI tree: copy it, without Horde's extra_model_paths.yaml
        root = tmp_path / "ComfyUI"
        shutil.copytree(COMFY_ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml"))
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(PACK_ROOT, base / "custom_nodes" / "nested-attention")
    stub = tmp_path / "stub" / "torchvision"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("from . import transforms\n")
    (stub / "transforms.py").write_text("")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(stub.parent))
    result = subprocess.run(
        [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--disable-api-nodes", "--base-directory", str(base),
         "--database-url", "sqlite:///:memory:"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    pack_lines = [line for line in log.splitlines() if "custom_nodes/nested-attention" in line]
    assert pack_lines, log[-3000:]
    assert not any("IMPORT FAILED" in line for line in pack_lines), "\n".join(pack_lines)
