"""Encode Subject (Q-Former), Save Nested Subject, Load Nested Subject."""

from __future__ import annotations

import os
from typing import Optional

import folder_paths
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.maps import qformer_patch_maps
from ..nested_core.subject import SubjectTokens, load_subject, save_subject
from .adapter_runtime import LoadedAdapter
from .io_types import CATEGORY, SUBJECT_FOLDER, NestedAdapterIO, NestedSubjectIO

COMBINE_MODES = ("average", "concat")


class EncodeSubjectQFormer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EncodeSubjectQFormer",
            display_name="Encode Subject (Q-Former)",
            category=CATEGORY,
            description=(
                "Turns photos of one subject into its nested tokens: CLIP vision features (penultimate layer) "
                "go through the adapter's Q-Former. A batch of several photos makes one subject: 'average' "
                "averages each token over the photos (keeps the adapter's token count); 'concat' keeps every "
                "photo's tokens, so each image region can draw on the best-matching photo. The optional mask "
                "keeps only the subject: the background is filled with CLIP's neutral mean colour."
            ),
            inputs=[
                NestedAdapterIO.Input("adapter"),
                io.ClipVision.Input(
                    "clip_vision",
                    tooltip="The CLIP vision model the adapter was trained with (ViT-H/14 for SDXL adapters)",
                ),
                io.Image.Input(
                    "image", tooltip="One or more photos of the same subject (a crop of the face for people)"
                ),
                io.Mask.Input(
                    "mask", optional=True, tooltip="1 on the subject, 0 on the background; one mask or one per photo"
                ),
                io.Combo.Input("combine", options=list(COMBINE_MODES), default="average", optional=True),
            ],
            outputs=[NestedSubjectIO.Output(display_name="subject")],
        )

    @classmethod
    def execute(
        cls, adapter: LoadedAdapter, clip_vision, image: Tensor, mask: Optional[Tensor] = None, combine: str = "average"
    ) -> io.NodeOutput:
        return io.NodeOutput(encode_subject(adapter, clip_vision, image, mask, combine))


def encode_subject(
    adapter: LoadedAdapter, clip_vision, image: Tensor, mask: Optional[Tensor] = None, combine: str = "average"
) -> SubjectTokens:
    """Encode a batch of photos of one subject into one SubjectTokens; errors name the input at fault."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise NestedAttentionError(
            f"Encode Subject: image has shape {list(image.shape)}; expected at least one "
            "photo (a batch [B, H, W, C] with B >= 1)"
        )
    if combine not in COMBINE_MODES:
        raise NestedAttentionError(
            f"Encode Subject: combine is '{combine}'; expected one of {', '.join(COMBINE_MODES)}"
        )
    width = clip_vision_width(clip_vision)
    if width is not None and width != adapter.config.clip_vision_width:
        raise NestedAttentionError(
            f"Encode Subject: the CLIP vision model has width {width} but adapter '{adapter.name}' expects "
            f"{adapter.config.clip_vision_width} ({_vision_name(adapter.config.clip_vision_width)}); "
            "load the CLIP vision model the adapter was trained with"
        )
    if mask is not None:
        image = _fill_background(image, mask, getattr(clip_vision, "image_mean", (0.48145466, 0.4578275, 0.40821073)))
    features = clip_vision.encode_image(image[..., :3], crop=True)["penultimate_hidden_states"]
    if features.shape[-1] != adapter.config.clip_vision_width:
        raise NestedAttentionError(
            f"Encode Subject: CLIP vision features have width {features.shape[-1]}; adapter "
            f"'{adapter.name}' expects {adapter.config.clip_vision_width}"
        )
    tokens, attention = adapter.encode(features)  # [M, N, C], per layer [M, h, N, P+N]
    photos, count = tokens.shape[0], tokens.shape[1]
    try:
        maps: Optional[Tensor] = qformer_patch_maps(attention, count)  # [M, N, g, g], for the maps node
    except ValueError:
        maps = None
    if combine == "average":
        tokens = tokens.mean(dim=0, keepdim=True)
        patch_maps = maps.mean(dim=0) if maps is not None else None
        token_photo = torch.full((count,), -1, dtype=torch.long)
    else:
        tokens = tokens.reshape(1, photos * count, tokens.shape[-1])
        patch_maps = maps.flatten(0, 1) if maps is not None else None
        token_photo = torch.arange(photos).repeat_interleave(count)
    return SubjectTokens(
        tokens=tokens,
        adapter_fingerprint=adapter.fingerprint,
        num_images=photos,
        combine=combine,
        patch_maps=patch_maps,
        token_photo=token_photo if patch_maps is not None else None,
    )


def clip_vision_width(clip_vision) -> Optional[int]:
    """Hidden width of a ComfyUI CLIP vision model, read from its class embedding when it has one."""
    embeddings = getattr(getattr(getattr(clip_vision, "model", None), "vision_model", None), "embeddings", None)
    class_embedding = getattr(embeddings, "class_embedding", None)
    return int(class_embedding.shape[-1]) if isinstance(class_embedding, Tensor) else None


def _vision_name(width: int) -> str:
    return {1280: "CLIP ViT-H/14", 1024: "CLIP ViT-L/14", 1664: "CLIP ViT-bigG/14"}.get(width, "a CLIP vision model")


def _fill_background(image: Tensor, mask: Tensor, mean) -> Tensor:
    """Blend each photo towards CLIP's mean colour where its mask is 0."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] == 0:
        raise NestedAttentionError(f"Encode Subject: mask has shape {list(mask.shape)}; expected [H, W] or [B, H, W]")
    if mask.shape[0] not in (1, image.shape[0]):
        raise NestedAttentionError(
            f"Encode Subject: {mask.shape[0]} masks for {image.shape[0]} photos; give one mask "
            "for all photos or one per photo"
        )
    resized = F.interpolate(mask[:, None].float(), size=image.shape[1:3], mode="bilinear", align_corners=False)
    weight = resized.permute(0, 2, 3, 1).clamp(0, 1).to(image)  # [B, H, W, 1]
    fill = torch.tensor(mean, dtype=image.dtype, device=image.device)
    return image[..., :3] * weight + fill * (1 - weight)


class SaveNestedSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveNestedSubject",
            display_name="Save Nested Subject",
            category=CATEGORY,
            description=f"Writes an encoded subject to models/{SUBJECT_FOLDER} as a small .safetensors file "
            "(never replacing an existing one), where Load Nested Subject finds it.",
            inputs=[NestedSubjectIO.Input("subject"), io.String.Input("filename_prefix", default="subject")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, subject: SubjectTokens, filename_prefix: str) -> io.NodeOutput:
        path = _free_path(folder_paths.get_folder_paths(SUBJECT_FOLDER)[0], filename_prefix)
        save_subject(path, subject)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {os.path.basename(path)} in models/{SUBJECT_FOLDER}"))


def _free_path(folder: str, prefix: str) -> str:
    """<folder>/<prefix>_00001.safetensors, the first number not taken."""
    prefix = os.path.basename(prefix.strip()) or "subject"
    os.makedirs(folder, exist_ok=True)
    number = 1
    while os.path.exists(path := os.path.join(folder, f"{prefix}_{number:05d}.safetensors")):
        number += 1
    return path


class LoadNestedSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadNestedSubject",
            display_name="Load Nested Subject",
            category=CATEGORY,
            description=f"Reads a subject saved by Save Nested Subject from models/{SUBJECT_FOLDER}.",
            inputs=[io.Combo.Input("subject_name", options=folder_paths.get_filename_list(SUBJECT_FOLDER))],
            outputs=[NestedSubjectIO.Output(display_name="subject")],
        )

    @classmethod
    def execute(cls, subject_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_subject(folder_paths.get_full_path_or_raise(SUBJECT_FOLDER, subject_name)))
