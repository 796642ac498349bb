"""Dependencies point inward: nested_core <- nodes <- nested_train <- toy_world <- nested_dev <- bench, tests.

Read from the source: every import statement of every Python file, relative ones resolved. Inside the
pack (nested_core, nodes, nested_train, its __init__) imports are relative; outside, the pack is the
package ``nested_attention``, never ``nested_core`` or ``nodes`` on their own (a second copy of a
module would hold second copies of its classes).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nested_core", "nodes", "nested_train", "toy_world", "nested_dev", "bench", "tests")
#: What each part may import, besides the standard library and third-party packages.
ALLOWED = {
    "nested_core": {"nested_core"},
    "nodes": {"nested_core", "nodes", "comfy"},
    "nested_train": {"nested_core", "nodes", "nested_train", "comfy"},
    "toy_world": {"nested_core", "nodes", "nested_train", "toy_world", "comfy"},
    "nested_dev": {"nested_core", "nodes", "nested_train", "toy_world", "nested_dev", "comfy"},
    "bench": {"nested_core", "nodes", "nested_train", "toy_world", "nested_dev", "comfy", "bench"},
    "tests": {"nested_core", "nodes", "nested_train", "toy_world", "nested_dev", "comfy", "tests"},
}
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server"}
IN_PACK = {"nested_core", "nodes", "nested_train"}


def part_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name relative to the repository root or top-level module) of every import."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(ROOT).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
                found.append((node.lineno, "." + name))  # "." marks a name resolved inside the repository
            else:
                found.append((node.lineno, node.module))
    return found


def layer_of(name: str, importer: str) -> "str | None":
    """The part of the project an imported name belongs to, "comfy" for ComfyUI, None for others."""
    if name.startswith("."):
        top = name[1:].split(".")[0] or "__init__"
        return top if top in PACKAGES else "pack-root"
    top = name.split(".")[0]
    if top == "nested_attention":
        rest = name.split(".")[1:2]
        return rest[0] if rest and rest[0] in PACKAGES else "pack-root"
    if top in COMFYUI_MODULES or (top == "nodes" and importer not in IN_PACK) or top == "utils":
        return "comfy"
    if top in PACKAGES:
        return f"top-level {top}"
    return None


def python_files():
    for part in PACKAGES:
        yield from sorted((ROOT / part).rglob("*.py"))


def test_every_import_points_inward():
    wrong = []
    for path in python_files():
        part = part_of(path)
        for line, name in imported(path):
            layer = layer_of(name, part)
            if layer is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {name.lstrip('.')}"
            if layer.startswith("top-level"):
                bare = layer.split()[1]
                entry = path.name == "__main__.py" and bare == part
                if bare in IN_PACK and not entry:
                    wrong.append(f"{where} (use nested_attention.{bare}, the pack's one name)")
                elif bare not in IN_PACK and bare not in ALLOWED[part]:
                    wrong.append(f"{where} ({part} may not depend on {bare})")
                continue
            if layer == "pack-root":
                if part not in IN_PACK and "nested_attention" not in name and name != "nested_attention":
                    wrong.append(f"{where} (reaches above its package)")
                continue
            if part in IN_PACK and name.startswith("nested_attention") and path.name != "__main__.py":
                wrong.append(f"{where} (inside the pack, import relatively)")
            if layer not in ALLOWED[part]:
                wrong.append(f"{where} ({part} may not depend on {layer})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    """The reader above resolves relative imports and classifies them (else the test could not fail)."""
    assert layer_of(".nodes.patch", "nested_train") == "nodes"
    assert layer_of("nested_attention.nested_core.attention", "toy_world") == "nested_core"
    assert layer_of("comfy.sample", "nested_core") == "comfy"
    assert layer_of("toy_world.models", "nested_train") == "top-level toy_world"
    assert "toy_world" not in ALLOWED["nested_train"] and "comfy" not in ALLOWED["nested_core"]


def test_the_engine_imports_without_comfyui():
    """In a fresh interpreter: the pack and every module of nested_core import, and nothing of ComfyUI."""
    modules = sorted(
        "nested_attention." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "nested_core").rglob("*.py")
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("part", ["nested_core", "nodes", "nested_train"])
def test_product_code_has_no_development_imports(part):
    for path in sorted((ROOT / part).rglob("*.py")):
        for line, name in imported(path):
            top = name.lstrip(".").split(".")[0]
            assert top not in ("nested_dev", "toy_world", "tests", "bench"), f"{path}:{line} imports {name}"
