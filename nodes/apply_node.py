"""Apply Nested Attention."""

from __future__ import annotations

from typing import Optional

from comfy_api.latest import io
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.subject import SubjectTokens
from .adapter_runtime import LoadedAdapter
from .apply_subject import apply_subject
from .io_types import CATEGORY, NestedAdapterIO, NestedSubjectIO
from .tokens import resolve_token


class ApplyNestedAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyNestedAttention",
            display_name="Apply Nested Attention",
            category=CATEGORY,
            description=(
                "Binds a subject to one word of the prompt (Nested Attention, Patashnik et al. 2025). In every "
                "cross-attention layer the word keeps its own key, so it draws attention as usual, but its value "
                "becomes a per-pixel mix of the subject's nested tokens. Prompts must be encoded with Nested Text "
                "Encode. Chain one Apply node per subject; the model you connect is not modified."
            ),
            inputs=[
                io.Model.Input("model"),
                NestedAdapterIO.Input("adapter"),
                NestedSubjectIO.Input("subject"),
                io.String.Input(
                    "token",
                    default="person",
                    tooltip="The prompt word that stands for the subject: one CLIP token "
                    "(person, woman, man, dog, cat...)",
                ),
                io.Float.Input(
                    "weight",
                    default=1.0,
                    min=-1.0,
                    max=3.0,
                    step=0.05,
                    tooltip="0: the plain word; 1: the paper's nested value; between: a blend; "
                    "above 1: stronger identity",
                ),
                io.Float.Input(
                    "start_at", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Start of the active part of sampling"
                ),
                io.Float.Input(
                    "end_at", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="End of the active part of sampling"
                ),
                io.Mask.Input(
                    "attn_mask",
                    optional=True,
                    tooltip="Where the subject may appear (1) and where the word stays plain (0); any size",
                ),
                io.Int.Input(
                    "occurrence",
                    default=0,
                    min=0,
                    max=64,
                    optional=True,
                    tooltip="0: every occurrence of the word; n: only the n-th (bind two people as 1 and 2)",
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, token: str = "person") -> "bool | str":
        """The word must be one CLIP token: checked with the prompt, before any node runs."""
        try:
            resolve_token(token)
        except NestedAttentionError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls,
        model,
        adapter: LoadedAdapter,
        subject: SubjectTokens,
        token: str,
        weight: float,
        start_at: float,
        end_at: float,
        attn_mask: Optional[Tensor] = None,
        occurrence: int = 0,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            apply_subject(model, adapter, subject, token, weight, start_at, end_at, attn_mask, occurrence)
        )
