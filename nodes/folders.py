"""The pack's two model folders: models/nested_adapters and models/nested_subjects."""

from __future__ import annotations

import os

import folder_paths

ADAPTER_FOLDER = "nested_adapters"
SUBJECT_FOLDER = "nested_subjects"


def register_model_folders() -> None:
    """models/<name> for each folder, plus any paths extra_model_paths.yaml already gave that name
    (idempotent)."""
    for name in (ADAPTER_FOLDER, SUBJECT_FOLDER):
        default = os.path.join(folder_paths.models_dir, name)
        paths, _ = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths) + ([default] if default not in paths else [])
        folder_paths.folder_names_and_paths[name] = (paths, set(folder_paths.supported_pt_extensions))
