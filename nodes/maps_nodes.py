"""Record Nested Attention and Nested Attention Maps: what each subject does, as images."""

from __future__ import annotations

from typing import Optional

from comfy_api.latest import io, ui
from torch import Tensor

from .io_types import CATEGORY, NestedRecordingIO
from .maps_render import render_maps
from .recording import PARTS, Recording, record_model

PART_CHOICES = ["all", *PARTS]


class RecordNestedAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RecordNestedAttention",
            display_name="Record Nested Attention",
            category=CATEGORY,
            description=(
                "Makes the next sampling with this model record what each subject does, for Nested Attention Maps. "
                "Place it after the Apply nodes. Without it nothing is recorded and sampling does no extra work. "
                "Memory, kept on the CPU: about (1 + tokens) x grid² floats per subject, image, UNet part and step "
                "(16 tokens, grid 32, 30 steps: 6 MB per subject and image) plus one value snapshot (5 MB for SDXL)."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Int.Input("grid", default=32, min=4, max=128, tooltip="Cells per side of the recorded maps"),
                io.String.Input(
                    "value_layer",
                    default="",
                    optional=True,
                    tooltip="Layer of the value snapshot, e.g. output.0.0; empty: the decoder's first",
                ),
                io.Float.Input(
                    "value_at",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="When to take the value snapshot, as a fraction of the steps",
                ),
            ],
            outputs=[io.Model.Output(), NestedRecordingIO.Output(display_name="recording")],
        )

    @classmethod
    def execute(cls, model, grid: int, value_layer: str = "", value_at: float = 0.5) -> io.NodeOutput:
        return io.NodeOutput(*record_model(model, grid, value_layer, value_at))


class NestedAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedAttentionMaps",
            display_name="Nested Attention Maps",
            category=CATEGORY,
            description=(
                "Shows what each subject did during the recorded sampling. subject_maps: where the subject's word "
                "acted in each generated image (its attention a_s*, times its region mask, averaged over heads and "
                "the chosen layers and steps, scaled to its maximum). source_maps: for the point (point_x, point_y) "
                "of the first image, which region of the reference photo it draws from: the nested-token weights "
                "there times each token's Q-Former attention over the CLIP patches (a distribution summing to 1). "
                "value_maps: the per-query values v*_q at the snapshot layer and step, projected to RGB by PCA, "
                "beside the word's single plain value. In the browser, click the generated image to move the point. "
                "reference: one photo shared by every subject, or one per subject in the order the Apply nodes are "
                "chained (the first after the checkpoint first), or every subject's encoded photos in that order "
                "(a subject encoded with combine=concat from 3 photos takes 3); batch several Load Image nodes "
                "with Batch Images."
            ),
            inputs=[
                NestedRecordingIO.Input("recording"),
                io.Image.Input("images", tooltip="The decoded images of the recorded sampling"),
                io.Image.Input(
                    "reference",
                    optional=True,
                    tooltip=(
                        "The subjects' reference photos, for the source map: one for all subjects, or one per "
                        "subject in the order the Apply nodes are chained, or each subject's encoded photos in "
                        "that order (combine=concat: one per photo)"
                    ),
                ),
                io.Float.Input("point_x", default=0.5, min=0.0, max=1.0, step=0.01),
                io.Float.Input("point_y", default=0.5, min=0.0, max=1.0, step=0.01),
                io.Combo.Input("parts", options=PART_CHOICES, default="all", tooltip="UNet parts to average"),
                io.Float.Input("first_step", default=0.0, min=0.0, max=1.0, step=0.05, tooltip="Fraction of the steps"),
                io.Float.Input("last_step", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="Fraction of the steps"),
            ],
            outputs=[
                io.Image.Output(display_name="subject_maps"),
                io.Image.Output(display_name="source_maps"),
                io.Image.Output(display_name="value_maps"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        recording: Recording,
        images: Tensor,
        point_x: float,
        point_y: float,
        parts: str,
        first_step: float,
        last_step: float,
        reference: Optional[Tensor] = None,
    ) -> io.NodeOutput:
        maps = render_maps(recording, images, point_x, point_y, parts, first_step, last_step, reference)
        generated = _temp_image(images[:1], cls)[0]
        photos = _temp_image(maps.photos, cls)
        # Each subject's view gets its own photos, in the order its tokens number them; without a reference
        # input there is only a grey stand-in, and no place in the input to name.
        payload = [
            entry
            | {"generated": generated, "reference": [photos[i] for i in entry["reference_index"]]}
            | ({} if reference is not None else {"reference_index": None})
            for entry in maps.payload
        ]
        return io.NodeOutput(maps.subject_maps, maps.source_maps, maps.value_maps, ui={"nested_maps": payload})


def _temp_image(images: Tensor, cls) -> list[dict]:
    """Save images to ComfyUI's temp folder for the browser view; their file references."""
    saved = ui.ImageSaveHelper.save_images(
        images.cpu(), filename_prefix="nested_maps", folder_type=io.FolderType.temp, cls=cls, compress_level=1
    )
    return [dict(item) for item in saved]
