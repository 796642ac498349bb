"""Load Nested Adapter."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .adapter_runtime import load_adapter
from .folders import ADAPTER_FOLDER
from .io_types import CATEGORY, NestedAdapterIO


class LoadNestedAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadNestedAdapter",
            display_name="Load Nested Adapter",
            category=CATEGORY,
            description=(
                "Loads a nested adapter (Q-Former encoder + nested key/value projections) from models/"
                f"{ADAPTER_FOLDER}. Native .safetensors adapters and IP-Adapter-Plus files (.safetensors or .bin, "
                "SD1.5 or SDXL, plus or plus-face) are recognised by their content, whatever the file is called."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_name",
                    options=folder_paths.get_filename_list(ADAPTER_FOLDER),
                    tooltip=f"A file in models/{ADAPTER_FOLDER}",
                )
            ],
            outputs=[NestedAdapterIO.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(ADAPTER_FOLDER, adapter_name)
        return io.NodeOutput(load_adapter(path, adapter_name))
