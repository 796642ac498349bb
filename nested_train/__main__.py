"""python -m nested_train --config run.toml -- run from the pack's folder with ComfyUI's Python.

Outside ComfyUI's loader the pack is the package ``nested_attention``; the trainer is its
``nested_train``. When that name is not importable yet (a plain ComfyUI install), the pack's
folder is registered under it here, and the command line runs from there.
"""

import importlib.util
import sys
from pathlib import Path


def _import_pack() -> None:
    if "nested_attention" in sys.modules or importlib.util.find_spec("nested_attention") is not None:
        return
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "nested_attention", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["nested_attention"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _import_pack()
    from nested_attention.nested_train.cli import main

    sys.exit(main())
