"""The ComfyUI layer of the pack: node classes, the attn2 patch and the sampling wrappers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply_node import ApplyNestedAttention
from .loader_node import LoadNestedAdapter
from .maps_nodes import NestedAttentionMaps, RecordNestedAttention
from .subject_nodes import EncodeSubjectQFormer, LoadNestedSubject, SaveNestedSubject
from .text_node import NestedTextEncode

NODES: list[type[io.ComfyNode]] = [
    LoadNestedAdapter,
    EncodeSubjectQFormer,
    ApplyNestedAttention,
    NestedTextEncode,
    SaveNestedSubject,
    LoadNestedSubject,
    RecordNestedAttention,
    NestedAttentionMaps,
]


class NestedAttentionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
