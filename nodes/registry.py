"""What an "Apply Nested Attention" node adds to a model: one immutable subject binding.

Bindings travel with the MODEL in ``model_options["transformer_options"][REGISTRY_KEY]`` as a
tuple that each Apply node extends (copy-on-write); the attn2 patches and sampling wrappers read
it at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

from torch import Tensor

from ..nested_core.layers import LayerKey
from .tokens import describe_occurrence

REGISTRY_KEY = "nested_attention_subjects"  # tuple[SubjectBinding, ...] in transformer_options
RUN_KEY = "nested_attention_run"  # NestedRun, for one sampling run
STEP_KEY = "nested_attention_step"  # StepState, for one model evaluation
WRAPPER_KEY = "nested_attention"  # key of the pack's sampling wrappers


@dataclass(frozen=True, eq=False)
class SubjectBinding:
    """One subject bound to one prompt token, with its nested keys and values per layer."""

    name: str  # for messages, e.g. "'person' (occurrence 2)"
    token_id: int
    occurrence: int  # 0: every occurrence of the token; n: the n-th
    weight: float
    sigma_start: float  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float
    layers: Mapping[LayerKey, tuple[Tensor, Tensor]]  # K~, V~: [1, N, inner] float32 on the CPU
    mask: Optional[Tensor] = None  # [B or 1, H, W] in [0, 1]: where the subject may act
    patch_maps: Optional[Tensor] = None  # [T, g, g] the subject's Q-Former maps (for the maps node)
    token_photo: Optional[Tensor] = None  # [T] photo of each token (-1: averaged)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))

    def active_at(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def __deepcopy__(self, memo: dict) -> "SubjectBinding":
        return self  # immutable; ComfyUI deep-copies model options on every clone


def binding_name(word: str, occurrence: int) -> str:
    return f"'{word}' ({describe_occurrence(occurrence)})"
