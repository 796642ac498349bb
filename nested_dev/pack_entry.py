"""The pack as a custom node of the in-process harness (see comfy_env.load_pack).

ComfyUI's own loader runs this file, which hands it the pack already imported as
``nested_attention``: one copy of every module, under the name the tests and tools import.
"""

from nested_attention import WEB_DIRECTORY, comfy_entrypoint  # noqa: F401
