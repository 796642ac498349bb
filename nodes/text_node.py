"""Nested Text Encode: CLIPTextEncode that also records the prompt's token ids."""

from __future__ import annotations

from comfy_api.latest import io

from .io_types import CATEGORY
from .text_encode import encode_prompt


class NestedTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedTextEncode",
            display_name="Nested Text Encode",
            category=CATEGORY,
            description=(
                "Encodes a prompt exactly like CLIP Text Encode and records its token ids, so Apply Nested "
                "Attention can find each subject's word in it. Use it for the positive and the negative prompt."
            ),
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    tooltip="The prompt; write each subject's word (e.g. 'person') where the subject belongs.",
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text: str) -> io.NodeOutput:
        return io.NodeOutput(encode_prompt(clip, text))
