"""Encode Subject (Q-Former), Save Nested Subject, Load Nested Subject."""

from __future__ import annotations

import os
from typing import Optional

import folder_paths
from comfy_api.latest import io, ui
from torch import Tensor

from ..nested_core.subject import SubjectTokens, free_subject_path, load_subject, save_subject
from .adapter_runtime import LoadedAdapter
from .encode import COMBINE_MODES, encode_subject
from .folders import SUBJECT_FOLDER
from .io_types import CATEGORY, NestedAdapterIO, NestedSubjectIO


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
        path = free_subject_path(folder_paths.get_folder_paths(SUBJECT_FOLDER)[0], filename_prefix)
        save_subject(path, subject)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {os.path.basename(path)} in models/{SUBJECT_FOLDER}"))


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
