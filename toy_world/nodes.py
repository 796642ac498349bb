"""Loader nodes for the toy world's models, used by its workflows (registered by the dev harness)."""

from __future__ import annotations

from comfy_api.latest import io

from .models import build_clip_vision, load_toy


class NestedDevToyCheckpoint(io.ComfyNode):
    """The toy world's trained UNet, text encoder and VAE (toy_world/weights)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevToyCheckpoint",
            display_name="Toy world checkpoint (dev)",
            category="nested_attention/dev",
            inputs=[],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        model, clip, vae = load_toy()
        return io.NodeOutput(model, clip, vae)


class NestedDevToyCLIPVision(io.ComfyNode):
    """The toy world's frozen image encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevToyCLIPVision",
            display_name="Toy world CLIP vision (dev)",
            category="nested_attention/dev",
            inputs=[],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(build_clip_vision())


TOY_NODES = [NestedDevToyCheckpoint, NestedDevToyCLIPVision]
