"""Joining subjects (on the model) with prompts (on the conditioning) while sampling.

Two ComfyUI wrappers, registered once per model whatever the number of Apply nodes:

* OUTER_SAMPLE opens a ``NestedRun`` for one sampling run. It holds everything that depends only on
  the prompt layout, the batch rows, the layer shape and the subjects, built on first use and then
  reused by every layer and step: token positions per conditioning, the one-hot columns and gather
  index of nested attention (``ContextPicks``) per layer shape, nested keys/values and region masks
  in the layer's dtype and device, and finally the ``LayerSubjects`` of each layer call.
* CALC_COND_BATCH, once per model evaluation, notes the prompts of the conditionings being
  evaluated, reads the step's sigma when a subject acts on part of sampling only, and hands a
  ``StepState`` to the attn2 patches.

The attn2 patch then asks the StepState (a ``contract.SubjectSource``) for the subjects of its layer
and batch rows: after the first step a dictionary lookup, with no tensor work and no host sync.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..nested_core.attention import ContextPicks, NestedSubject, TokenPositions, prepare_picks
from ..nested_core.layers import LayerKey
from .contract import (
    PROMPT_KEY,
    RECORD_KEY,
    REGISTRY_KEY,
    RUN_KEY,
    STEP_KEY,
    LayerSubjects,
    SubjectBinding,
    sigma_of,
    with_transformer_options,
)
from .masks import mask_for_layer, rows_for_batch
from .tokens import PromptTokens, first_words, token_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptPositions:
    """One conditioning entry: its context length and each binding's positions in it."""

    length: int
    positions: tuple[tuple[int, ...], ...]  # per binding index


class NestedRun:
    """Per-run caches; dropped when sampling ends, so device copies do not outlive the run."""

    def __init__(self, registry: tuple[SubjectBinding, ...]):
        self.registry = registry
        self._prompts: dict[Any, Optional[PromptPositions]] = {}
        self._positions: dict[tuple, tuple[Optional[TokenPositions], ...]] = {}
        self._kv: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._masks: dict[tuple, Tensor] = {}
        self._picks: dict[tuple, ContextPicks] = {}
        self._layers: dict[tuple, Optional[LayerSubjects]] = {}
        self._warned: set[str] = set()

    # --- prompts -------------------------------------------------------------------------
    def note_conds(self, conds: Sequence[Optional[list[dict]]]) -> None:
        """Record the subjects' token positions in every conditioning entry not seen yet in this run."""
        new_positive = False
        for index, entries in enumerate(conds):
            for cond in entries or ():
                uid = cond.get("uuid")
                if uid is None or uid in self._prompts:
                    continue
                self._prompts[uid] = self._prompt_positions(cond, positive=index == 0)
                new_positive |= index == 0
        if new_positive:
            self._warn_missing_tokens(conds[0] or ())

    def _prompt_positions(self, cond: dict, positive: bool) -> Optional[PromptPositions]:
        prompt: Optional[PromptTokens] = cond.get(PROMPT_KEY)
        cross_attn = cond.get("model_conds", {}).get("c_crossattn")
        length = getattr(cross_attn, "cond", None)
        length = int(length.shape[1]) if isinstance(length, Tensor) else None
        if prompt is None:
            if positive:
                self._warn_once(
                    "untracked",
                    "a positive prompt was not encoded with 'Nested Text Encode', so "
                    "subject tokens cannot be found in it and no subject acts there; encode prompts "
                    "that name a subject with 'Nested Text Encode'",
                )
            return None
        if length is not None and length != len(prompt.ids):
            self._warn_once(
                f"length:{prompt.text}",
                f"the conditioning of prompt '{first_words(prompt.text)}' has "
                f"{length} tokens but {len(prompt.ids)} were recorded (changed by a node such as "
                "ConditioningConcat?); subjects are not applied to it",
            )
            return None
        positions = tuple(tuple(prompt.positions(b.token_id, b.occurrence)) for b in self.registry)
        for binding, found in zip(self.registry, positions):
            if found:
                log.info(
                    "Nested Attention: subject %s found at context positions %s of the %s prompt '%s'",
                    binding.name,
                    list(found),
                    "positive" if positive else "negative",
                    first_words(prompt.text),
                )
        return PromptPositions(length=len(prompt.ids), positions=positions)

    def _warn_missing_tokens(self, positives: Sequence[dict]) -> None:
        found = [(c, self._prompts.get(c.get("uuid"))) for c in positives]
        tracked = [(c, prompt) for c, prompt in found if prompt is not None]
        if not tracked:
            return
        for index, binding in enumerate(self.registry):
            if any(prompt.positions[index] for _, prompt in tracked):
                continue
            text = tracked[0][0][PROMPT_KEY].text
            self._warn_once(
                f"missing:{index}",
                f"subject {binding.name}: the word '{token_text(binding.token_id)}' "
                f"is not in the positive prompt '{first_words(text)}', so the image is generated "
                "without this subject; add the word to the prompt",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("Nested Attention: %s", message)

    # --- per layer -------------------------------------------------------------------------
    def positions(
        self, uuids: Sequence[Any], rows_per_chunk: int, context: int, device: torch.device
    ) -> tuple[Optional[TokenPositions], ...]:
        """Each binding's context positions for the batch rows of one model call (None: absent)."""
        key = (tuple(uuids), rows_per_chunk, context, device)
        cached = self._positions.get(key)
        if cached is None:
            cached = self._positions[key] = tuple(
                self._binding_positions(i, uuids, rows_per_chunk, context, device) for i in range(len(self.registry))
            )
        return cached

    def _binding_positions(
        self, index: int, uuids: Sequence[Any], rows_per_chunk: int, context: int, device: torch.device
    ) -> Optional[TokenPositions]:
        per_row: list[list[int]] = []
        for uid in uuids:
            prompt = self._prompts.get(uid)
            found = list(prompt.positions[index]) if prompt is not None else []
            if found and context % prompt.length:
                self._warn_once(
                    f"tile:{context}:{prompt.length}",
                    f"a context of {context} tokens is not a "
                    f"whole number of copies of a {prompt.length}-token prompt; subjects skipped there",
                )
                found = []
            copies = context // prompt.length if found else 0
            tiled = [p + copy * prompt.length for copy in range(copies) for p in found]
            per_row.extend([tiled] * rows_per_chunk)
        if not any(per_row):
            return None
        return TokenPositions.from_lists(per_row, device)

    def nested_kv(self, index: int, key: LayerKey, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        cache_key = (index, key, device, dtype)
        cached = self._kv.get(cache_key)
        if cached is None:
            k, v = self.registry[index].layers[key]
            cached = self._kv[cache_key] = (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
        return cached

    def layer_mask(
        self,
        index: int,
        rows_per_chunk: int,
        chunks: int,
        tokens: int,
        extra_options: dict,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Optional[Tensor]:
        mask = self.registry[index].mask
        if mask is None:
            return None
        cache_key = (index, rows_per_chunk, chunks, tokens, device, dtype)
        cached = self._masks.get(cache_key)
        if cached is None:
            per_item = mask_for_layer(mask.to(device), tokens, extra_options)
            cached = self._masks[cache_key] = rows_for_batch(per_item, rows_per_chunk, chunks).to(dtype)
        return cached

    def layer_subjects(
        self, layer: LayerKey, active: tuple[int, ...], q: Tensor, k: Tensor, extra_options: dict
    ) -> Optional[LayerSubjects]:
        """The active subjects with weights for this layer and a token in these rows, prepared for
        this layer's shape; built on the first call of a layout and shape, then looked up."""
        uuids = tuple(extra_options.get("uuids") or ())
        if not uuids:
            return None
        heads = extra_options["n_heads"]
        key = (layer, active, uuids, q.shape[0], q.shape[1], k.shape[1], heads, q.shape[2], q.device, q.dtype)
        if key in self._layers:
            return self._layers[key]
        chunks = len(uuids)
        rows_per_chunk = q.shape[0] // chunks
        positions = self.positions(uuids, rows_per_chunk, k.shape[1], q.device)
        indices, subjects = [], []
        for index in active:
            binding = self.registry[index]
            if positions[index] is None or layer not in binding.layers:
                continue
            nested_k, nested_v = self.nested_kv(index, layer, q.device, q.dtype)
            mask = self.layer_mask(index, rows_per_chunk, chunks, q.shape[1], extra_options, q.device, q.dtype)
            indices.append(index)
            subjects.append(NestedSubject(nested_k, nested_v, positions[index], binding.weight, mask))
        bound = None
        if subjects:
            picks_key = (tuple(indices), uuids, rows_per_chunk, k.shape[1], heads, q.shape[2], q.device, q.dtype)
            if picks_key not in self._picks:
                self._picks[picks_key] = prepare_picks(
                    [s.positions for s in subjects], k.shape[1], heads, q.shape[2] // heads, q.dtype, q.device
                )
            bound = LayerSubjects(tuple(indices), tuple(subjects), self._picks[picks_key])
        self._layers[key] = bound
        return bound


@dataclass(frozen=True)
class StepState:
    """The subjects active at this step's sigma, and the run's caches (a ``contract.SubjectSource``)."""

    run: NestedRun
    active: tuple[int, ...]  # indices into run.registry

    def subjects_for(self, layer: LayerKey, q: Tensor, k: Tensor, extra_options: dict) -> Optional[LayerSubjects]:
        return self.run.layer_subjects(layer, self.active, q, k, extra_options)


def outer_sample_wrapper(executor, *args, **kwargs):
    """Give the sampling run its own NestedRun (swapped into the guider's options, then restored)."""
    guider = executor.class_obj
    original = guider.model_options
    options = original.get("transformer_options", {})
    registry = options.get(REGISTRY_KEY)
    if not registry:
        return executor(*args, **kwargs)
    if options.get(RECORD_KEY) is not None:
        options[RECORD_KEY].reset(registry)
    guider.model_options = with_transformer_options(original, {RUN_KEY: NestedRun(registry)})
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original


def calc_cond_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    """Per model evaluation: note the prompts, read sigma once, pass a StepState to the patches."""
    options = model_options.get("transformer_options", {})
    registry = options.get(REGISTRY_KEY)
    if not registry:
        return executor(model, conds, x_in, timestep, model_options)
    run = options.get(RUN_KEY)
    if run is None or run.registry is not registry:
        run = NestedRun(registry)  # called outside a guider's sample(): caches last one evaluation
        recording = options.get(RECORD_KEY)
        if recording is not None and recording.registry is not registry:
            recording.reset(registry)
    run.note_conds(conds)
    if all(b.always_active for b in run.registry):
        active = tuple(range(len(run.registry)))  # no sigma to read, so no wait for the device
    else:
        sigma = sigma_of(timestep)
        active = tuple(i for i, b in enumerate(run.registry) if b.active_at(sigma))
    if not active:
        return executor(model, conds, x_in, timestep, model_options)
    step_options = with_transformer_options(model_options, {STEP_KEY: StepState(run, active)})
    return executor(model, conds, x_in, timestep, step_options)
