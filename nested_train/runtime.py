"""ComfyUI and the pack, loaded once for the trainer (the pack exactly as ComfyUI loads it)."""

from __future__ import annotations

import types
from typing import Optional

_pack: Optional[types.ModuleType] = None


def start(cpu: bool) -> types.ModuleType:
    """Prepare ComfyUI (CPU or its GPU) and load the pack; call before anything touches comfy."""
    global _pack
    if _pack is None:
        from nested_dev.comfy_env import load_pack, prepare_comfyui

        prepare_comfyui(cpu=cpu)
        _pack = load_pack()
    return _pack


def pack() -> types.ModuleType:
    if _pack is None:
        raise RuntimeError("nested_train.runtime.start() must run first")
    return _pack
