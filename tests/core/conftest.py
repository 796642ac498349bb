"""Test set-up of tests/core: the engine alone, without ComfyUI.

Nothing here starts ComfyUI, and a session that runs only these tests fails if anything imported it
(./dev test runs tests/core in a process of its own): the engine must stay plain PyTorch.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_comfyui(request):
    yield
    runtime_tests = any("tests/runtime" in str(item.path).replace("\\", "/") for item in request.session.items)
    loaded = sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy.") or m == "folder_paths")
    if loaded and not runtime_tests:
        pytest.fail(f"the engine's tests imported ComfyUI ({', '.join(loaded[:3])}, ...): nested_core must not")
