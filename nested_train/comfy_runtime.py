"""Finding ComfyUI and preparing it for use inside this process, for code that runs outside ComfyUI.

The trainer (and the development tools built on it) run as plain Python programs, not as nodes, but
load models with ComfyUI's own classes. ``prepare_comfyui`` puts a ComfyUI tree on the path and
chooses its device before anything imports ``comfy.model_management``, which fixes the device when
it is first imported.

Search order: ``COMFYUI_PATH``; the ComfyUI this pack is installed in
(``<ComfyUI>/custom_nodes/<pack>``); a ComfyUI tree already on the Python path (the development
environment puts the one from PyPI there).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

PACK_ROOT = Path(__file__).resolve().parent.parent


def is_comfyui(root: Path) -> bool:
    return (root / "comfy" / "model_management.py").is_file() and (root / "nodes.py").is_file()


def locate_comfyui() -> Path:
    """The root folder of a ComfyUI tree (the one holding main.py, nodes.py and comfy/)."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    spec = importlib.util.find_spec("comfy")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]).parent)
    for root in candidates:
        if is_comfyui(root):
            return root.resolve()
    raise RuntimeError(
        "no ComfyUI found: set COMFYUI_PATH to a ComfyUI folder, or run from the pack installed in "
        "ComfyUI/custom_nodes (tried: " + (", ".join(str(c) for c in candidates) or "nothing") + ")"
    )


def prepare_comfyui(root: Optional[Path] = None, cpu: bool = True) -> Path:
    """Put ComfyUI first on sys.path and configure it; call before importing anything from comfy.

    ``cpu`` takes effect only if ComfyUI's device has not been chosen yet in this process.
    """
    root = root or locate_comfyui()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if sys.path[:1] != [str(root)]:
        sys.path.insert(0, str(root))
    # As in main.py: ComfyUI's `utils` package must be imported before `nodes`, which puts comfy/
    # (holding a utils.py) first on sys.path.
    import comfy.cli_args
    import utils.extra_config  # noqa: F401

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (initialises devices with the settings above)
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    return root
