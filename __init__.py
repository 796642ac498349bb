"""Nested Attention for ComfyUI: personalised subjects bound to prompt words (Patashnik et al., 2025).

Inside ComfyUI, importing the pack registers its two model folders; ComfyUI then calls
``comfy_entrypoint`` for the nodes. Outside ComfyUI (the trainer, the engine's tests) the package
imports as a library, ``nested_attention``, and touches nothing of ComfyUI: its engine
``nested_core`` is plain PyTorch, and ``nodes`` may be imported once ComfyUI is prepared
(``nested_train.comfy_runtime``). Nothing is ever downloaded.
"""

import sys

WEB_DIRECTORY = "./web"

# Guarded like ComfyUI-GGUF's __init__, with one difference: instead of trying to import ComfyUI,
# look whether ComfyUI is already running in this process (it imports folder_paths long before it
# loads custom nodes). A ComfyUI that is merely importable must not be started here as a side
# effect, before a trainer has chosen its device.
if "folder_paths" in sys.modules:
    from .nodes.folders import register_model_folders

    register_model_folders()


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the pack's nodes (imported here, so a library import stays light)."""
    from .nodes import NestedAttentionExtension
    from .nodes.folders import register_model_folders

    register_model_folders()  # again, for a pack imported as a library before ComfyUI started
    return NestedAttentionExtension()
