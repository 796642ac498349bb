"""Starting ComfyUI's own main.py in a subprocess, with this pack in its custom_nodes folder, serving
the front end of the environment or another version of it from a cache."""

from __future__ import annotations

import logging
import os
import re
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


#: The newest front end the browser test also runs against (the pinned one is in dev-requirements.txt).
NEWEST_FRONTEND = "1.58.1"
#: Front-end packages other than the environment's, one folder per version (git-ignored).
FRONTEND_CACHE = PACK_ROOT / ".cache" / "frontend"

log = logging.getLogger(__name__)


def frontend_root(version: str, install: bool = True) -> Optional[Path]:
    """The static folder of comfyui-frontend-package==version for --front-end-root, from the cache;
    installed there with pip (--target, so the environment is untouched) when missing and ``install``
    is set. None when it is not there and cannot be installed."""
    target = FRONTEND_CACHE / version
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    if not install:
        return None
    log.info("installing comfyui-frontend-package==%s into %s", version, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps"]
        + ["--target", str(target), f"comfyui-frontend-package=={version}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not (static / "index.html").is_file():
        log.warning("could not install comfyui-frontend-package==%s:\n%s", version, result.stderr[-2000:])
        return None
    return static


#: What ComfyUI logs when a package its requirements.txt lists for the front end is missing or old.
_MISSING_PACKAGE = re.compile(
    r"(\S+ is not installed|\S+ package not found|Installed frontend version .* is lower than the recommended)"
)


def missing_package_errors(log_text: str) -> list[str]:
    """The lines of a ComfyUI log saying that comfyui-frontend-package, comfyui-workflow-templates or
    comfyui-embedded-docs (ComfyUI's requirements.txt) is missing or older than it asks."""
    return [line.strip() for line in log_text.splitlines() if _MISSING_PACKAGE.search(line)]


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
    """A live ComfyUI server on loopback; stop() kills it by process id. ``front_end_root``: a front
    end's static folder (see frontend_root) instead of the environment's comfyui-frontend-package."""

    def __init__(self, scratch: Path, dev_nodes: bool = True, front_end_root: Optional[Path] = None):
        self.scratch = scratch
        self.base = base_directory(scratch, dev_nodes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / "server.log"
        self.front_end_root = front_end_root
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120.0) -> "Server":
        log = open(self.log_path, "w")
        extra = ["--front-end-root", str(self.front_end_root)] if self.front_end_root else []
        self.process = subprocess.Popen(
            command(self.base, "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch", *extra),
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
