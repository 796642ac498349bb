"""Nested Attention for ComfyUI: personalised subjects bound to prompt words (Patashnik et al., 2025).

Importing the pack registers its two model folders and its web folder; nothing else happens at
import time, and nothing is ever downloaded.
"""

from __future__ import annotations

import os

import folder_paths

from .nodes import NestedAttentionExtension
from .nodes.io_types import ADAPTER_FOLDER, SUBJECT_FOLDER

WEB_DIRECTORY = "./web"


def _register_model_folder(name: str) -> None:
    """models/<name>, plus any paths extra_model_paths.yaml already gave that name."""
    default = os.path.join(folder_paths.models_dir, name)
    paths, _ = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[name] = (paths, set(folder_paths.supported_pt_extensions))


for _folder in (ADAPTER_FOLDER, SUBJECT_FOLDER):
    _register_model_folder(_folder)


async def comfy_entrypoint() -> NestedAttentionExtension:
    return NestedAttentionExtension()
