"""The contract of one sampling run: what the nodes put where, and what the attn2 patch asks of a step.

An "Apply Nested Attention" node adds one immutable ``SubjectBinding`` to the MODEL, in
``model_options["transformer_options"][REGISTRY_KEY]``: a tuple that each Apply node extends
(copy-on-write, see ``with_transformer_options``), so chaining nodes never changes a model another
branch of the graph holds. While sampling, the pack's wrappers add, in copies of those options:

* ``RUN_KEY``: the run's caches (``sampling.NestedRun``), for one sampling run;
* ``STEP_KEY``: a ``SubjectSource`` for one model evaluation, which the attn2 patches ask for the
  subjects of their layer and batch rows, as ``LayerSubjects`` (``sampling.StepState`` while
  sampling, which prepares them once per run and layer shape; the trainer's ``TrainingStep``);
* ``RECORD_KEY``: a ``recording.Recording``, only when Record Nested Attention is in the graph.

Prompts carry their token ids in each conditioning entry under ``PROMPT_KEY`` (Nested Text Encode).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Protocol

from torch import Tensor

from ..nested_core.attention import ContextPicks, NestedSubject
from ..nested_core.layers import LayerKey

REGISTRY_KEY = "nested_attention_subjects"  # tuple[SubjectBinding, ...] in transformer_options
RUN_KEY = "nested_attention_run"  # sampling.NestedRun, for one sampling run
STEP_KEY = "nested_attention_step"  # a SubjectSource, for one model evaluation
RECORD_KEY = "nested_attention_recording"  # recording.Recording, when maps are recorded
WRAPPER_KEY = "nested_attention"  # key of the pack's sampling wrappers
PROMPT_KEY = "nested_attention_prompt"  # tokens.PromptTokens, in each conditioning entry

#: ComfyUI's stand-in sigma for calls without a schedule (its own attention code uses the same).
NO_SIGMA = 999999999.9


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

    @property
    def always_active(self) -> bool:
        """Acting over the whole of sampling (start_at 0, end_at 1): no sigma needs reading."""
        return self.sigma_end <= 0.0 and self.sigma_start >= NO_SIGMA

    def __deepcopy__(self, memo: dict) -> "SubjectBinding":
        return self  # immutable; ComfyUI deep-copies model options on every clone


@dataclass(frozen=True)
class LayerSubjects:
    """The subjects acting on one attn2 layer call, and what nested attention needs prepared."""

    indices: tuple[int, ...]  # each subject's index in the registry (the recording names them by it)
    subjects: tuple[NestedSubject, ...]
    picks: Optional[ContextPicks] = None  # prepared for this layer shape and dtype; None: built per call


class SubjectSource(Protocol):
    """What the attn2 patch asks of the object under ``STEP_KEY``."""

    def subjects_for(
        self, layer: LayerKey, q: Tensor, k: Tensor, extra_options: dict[str, Any]
    ) -> Optional[LayerSubjects]:
        """The subjects acting on this layer call's rows, or None when none does."""
        ...


def with_transformer_options(model_options: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``model_options`` whose transformer_options hold ``updates`` too.

    Copy-on-write: neither dict given is changed, so models, guiders and callers that share
    them keep what they had. Assign the result where the options belong.
    """
    options = model_options.get("transformer_options", {})
    return {**model_options, "transformer_options": {**options, **updates}}


def sigma_of(timestep: Any) -> float:
    """The sigma of a model call: its ``timestep`` (or ``extra_options["sigmas"]``) tensor's first
    value; ``NO_SIGMA`` when there is none."""
    if timestep is None:
        return NO_SIGMA
    if isinstance(timestep, Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)
