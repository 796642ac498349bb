"""Record Nested Attention and Nested Attention Maps: what each subject does, as images."""

from __future__ import annotations

from typing import Optional

import torch
from comfy_api.latest import io, ui
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.layers import LayerKey
from ..nested_core.maps import pca_rgb, source_heatmap
from .io_types import CATEGORY
from .map_images import mark_point, normalised, overlay, square_crop
from .model_layers import attn2_sites
from .recording import PARTS, RECORD_KEY, Recording

NestedRecordingIO = io.Custom("NESTED_RECORDING")
PART_CHOICES = ["all", *PARTS]
SOURCE_SIZE = 256


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
        layer = None
        if value_layer.strip():
            try:
                layer = LayerKey.parse(value_layer)
            except ValueError as error:
                raise NestedAttentionError(f"Record Nested Attention: value_layer: {error}") from error
            sites = attn2_sites(model)
            if layer not in sites:
                raise NestedAttentionError(
                    f"Record Nested Attention: the model has no layer {layer}; it has "
                    f"{', '.join(map(str, list(sites)[:4]))}, ..."
                )
        recording = Recording(grid=grid, value_layer=layer, value_at=value_at)
        patched = model.clone()
        options = patched.model_options.get("transformer_options", {})
        patched.model_options["transformer_options"] = {**options, RECORD_KEY: recording}
        return io.NodeOutput(patched, recording)


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
                "beside the word's single plain value. In the browser, click the generated image to move the point."
            ),
            inputs=[
                NestedRecordingIO.Input("recording"),
                io.Image.Input("images", tooltip="The decoded images of the recorded sampling"),
                io.Image.Input(
                    "reference", optional=True, tooltip="The subject's reference photo(s), for the source map"
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
        if not recording.traces:
            raise NestedAttentionError(
                "Nested Attention Maps: nothing was recorded. Sample with the MODEL output of Record Nested Attention "
                "(after the Apply nodes), with prompts from Nested Text Encode that contain the subjects' words."
            )
        chosen = list(PARTS) if parts == "all" else [parts]
        last = max(recording.steps - 1, 0)
        steps = (round(first_step * last), round(last_step * last))
        photos = (
            square_crop(reference, SOURCE_SIZE)
            if reference is not None
            else torch.full((1, SOURCE_SIZE, SOURCE_SIZE, 3), 0.5)
        )
        views = {"generated": _temp_image(images[:1], cls)[0], "reference": _temp_image(photos, cls)}
        subject_maps, source_maps, value_maps, payload = [], [], [], []
        for index in sorted(recording.traces):
            trace = recording.traces[index]
            maps = recording.averaged(index, chosen, *steps)
            if maps is None:
                continue
            binding = recording.registry[index]
            acting = normalised(maps[:, 0])  # [B, gh, gw]
            subject_maps.append(overlay(images[: acting.shape[0]], acting))
            weights = maps[0, 1:]  # [T, gh, gw]
            source, photo = _source(weights, binding, point_x, point_y)
            base = photos[min(max(photo, 0), photos.shape[0] - 1)][None]
            source_maps.append(overlay(base, normalised(source)[None]) if source is not None else base)
            if trace.values is not None:
                value_maps.append(_value_image(trace.values[0], trace.class_value))
            payload.append(_payload(binding, weights, trace.name) | views)
        if not subject_maps:
            raise NestedAttentionError(
                f"Nested Attention Maps: no subject was recorded in parts '{parts}' between "
                f"steps {steps[0]} and {steps[1]}"
            )
        marked = [mark_point(m, point_x, point_y) for m in subject_maps]
        values = torch.cat(value_maps) if value_maps else torch.zeros(1, 64, 128, 3)
        return io.NodeOutput(torch.cat(marked), torch.cat(source_maps), values, ui={"nested_maps": payload})


def _temp_image(images: Tensor, cls) -> list[dict]:
    """Save images to ComfyUI's temp folder for the browser view; their file references."""
    saved = ui.ImageSaveHelper.save_images(
        images.cpu(), filename_prefix="nested_maps", folder_type=io.FolderType.temp, cls=cls, compress_level=1
    )
    return [dict(item) for item in saved]


def _source(weights: Tensor, binding, x: float, y: float) -> tuple[Optional[Tensor], int]:
    """Heatmap [g, g] over the reference photo for the cell at (x, y), and which photo it is on."""
    if binding.patch_maps is None:
        return None, 0
    gh, gw = weights.shape[1:]
    cell = weights[:, min(int(y * gh), gh - 1), min(int(x * gw), gw - 1)]  # [T]
    photos = binding.token_photo
    photo = 0
    if photos is not None and int(photos.max()) >= 0:
        mass = torch.zeros(int(photos.max()) + 1).index_add_(0, photos.clamp_min(0), cell)
        photo = int(mass.argmax())
        cell = torch.where(photos == photo, cell, torch.zeros_like(cell))
    cell = cell / cell.sum().clamp_min(1e-12)
    return source_heatmap(cell, binding.patch_maps), photo


def _value_image(values: Tensor, class_value: Optional[Tensor], height: int = 256) -> Tensor:
    """PCA colours of v*_q over the grid, beside the constant colour of the plain value V_s*."""
    channels, gh, gw = values.shape
    vectors = values.reshape(channels, gh * gw).T  # [cells, inner]
    if class_value is not None:
        vectors = torch.cat([vectors, class_value[None].float()])
    colours = pca_rgb(vectors)
    nested = colours[: gh * gw].T.reshape(3, gh, gw)
    width = max(1, round(height * gw / gh))
    left = torch.nn.functional.interpolate(nested[None], size=(height, width), mode="nearest")[0].permute(1, 2, 0)
    right = colours[-1].expand(height, width, 3) if class_value is not None else torch.zeros(height, width, 3)
    gap = torch.ones(height, 4, 3)
    return torch.cat([left, gap, right], dim=1)[None]


def _payload(binding, weights: Tensor, name: str) -> dict:
    """What the browser needs to redraw the source map for any clicked cell."""
    entry = {"subject": name, "grid": list(weights.shape[1:]), "tokens": weights.shape[0]}
    if binding.patch_maps is not None:
        entry["weights"] = [round(float(v), 4) for v in weights.permute(1, 2, 0).reshape(-1)]
        entry["patch_grid"] = list(binding.patch_maps.shape[1:])
        entry["patch_maps"] = [round(float(v), 5) for v in binding.patch_maps.reshape(-1)]
        entry["token_photo"] = [int(v) for v in binding.token_photo] if binding.token_photo is not None else None
    return entry
