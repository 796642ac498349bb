"""An independent float64 account of what every recorded attn2 call should have returned.

From the files and the prompt texts alone (adapter and subject files read with the top-level
``nested_core`` package, token ids from the tokenizer, contexts from captured conditionings) this
recomputes the nested keys/values, the token positions in each batch chunk and the sigma gating,
and checks each call's output against the literal per-query-value form of Eq. 1 and Eq. 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from reference_math import nested_attention_reference
from torch import Tensor

from nested_attention.nested_core import load_adapter_checkpoint, load_subject
from nested_attention.nested_core.layers import LayerKey, diffusers_order


@dataclass
class ExpectedSubject:
    adapter_path: str
    subject_path: str
    word: str
    occurrence: int = 0
    weight: float = 1.0
    start_at: float = 0.0
    end_at: float = 1.0
    mask: Optional[Tensor] = None
    _kv: dict = field(default_factory=dict)

    def nested_kv(self, layer: LayerKey, sites) -> tuple[Tensor, Tensor]:
        if layer not in self._kv:
            checkpoint = load_adapter_checkpoint(self.adapter_path)
            keys = checkpoint.config.layer_keys or tuple(diffusers_order(sites))
            index = list(map(str, keys)).index(str(layer))
            tokens = load_subject(self.subject_path).tokens.double()
            state = checkpoint.state_dict
            self._kv[layer] = (
                tokens @ state[f"nested.{index}.to_k.weight"].double().T,
                tokens @ state[f"nested.{index}.to_v.weight"].double().T,
            )
        return self._kv[layer]


@dataclass
class ExpectedPrompt:
    context: Tensor  # [1, L, D] the conditioning tensor
    ids: Optional[list[int]]  # token ids per position (None: not a Nested Text Encode prompt)


def token_ids(clip, text: str) -> list[int]:
    tokens = clip.tokenize(text)
    chunks = tokens["l"] if "l" in tokens else next(iter(tokens.values()))
    return [int(t[0]) if isinstance(t[0], int) else -1 for chunk in chunks for t in chunk]


def single_token(clip, word: str) -> int:
    ids = [i for i in token_ids(clip, word) if i not in (49406, 49407)]
    assert len(ids) == 1, word
    return ids[0]


def attn2_module(model, layer: LayerKey):
    path = {
        "input": f"input_blocks.{layer.number}.1",
        "output": f"output_blocks.{layer.number}.1",
        "middle": "middle_block.1",
    }[layer.block]
    return model.get_model_object("diffusion_model").get_submodule(f"{path}.transformer_blocks.{layer.depth}.attn2")


def check_calls(
    records,
    model,
    clip,
    prompts: list[ExpectedPrompt],
    subjects: list[ExpectedSubject],
    sites,
    foreign_strength: Optional[float] = None,
    foreign_add_strength: float = 0.0,
) -> dict[str, int]:
    """Assert every recorded call matches; return counts of calls with and without active subjects."""
    sampling = model.get_model_object("model_sampling")
    token_of = [single_token(clip, s.word) for s in subjects]
    counts = {"with_subjects": 0, "plain": 0}
    assert records, "no attn2 calls were recorded"
    for call in records:
        layer = LayerKey(*call.layer)
        q, k, v = call.q.double(), call.k.double(), call.v.double()
        chunks = len(call.uuids)
        rows = q.shape[0] // chunks
        to_k = attn2_module(model, layer).to_k
        specs = []
        for index, subject in enumerate(subjects):
            sigma_start = float(sampling.percent_to_sigma(subject.start_at))
            sigma_end = float(sampling.percent_to_sigma(subject.end_at))
            if not sigma_end <= call.sigma <= sigma_start:
                continue
            per_row = []
            for chunk in range(chunks):
                prompt = _which_prompt(call.k[chunk * rows], to_k, prompts)
                found = [] if prompt.ids is None else [i for i, t in enumerate(prompt.ids) if t == token_of[index]]
                if subject.occurrence:
                    found = found[subject.occurrence - 1 : subject.occurrence]
                length = prompt.context.shape[1]
                tiled = [p + c * length for c in range(k.shape[1] // length) for p in found]
                per_row += [tiled] * rows
            if not any(per_row):
                continue
            nested_k, nested_v = subject.nested_kv(layer, sites)
            spec = dict(keys=nested_k, values=nested_v, positions=per_row, weight=subject.weight)
            if subject.mask is not None:
                spec["mask"] = _mask_rows(subject.mask, call, rows, chunks)
            specs.append(spec)
        plain = nested_attention_reference(q, k, v, call.heads, [])
        base = plain
        if foreign_strength is not None:
            base = plain + foreign_strength * torch.tanh(q) + foreign_add_strength * torch.sin(q)
        expected = base + (nested_attention_reference(q, k, v, call.heads, specs) - plain if specs else 0)
        error = float((call.out.double() - expected).abs().max() / expected.abs().max())
        assert error < 1e-4, f"layer {layer} sigma {call.sigma:.3f}: relative error {error:.2e}"
        counts["with_subjects" if specs else "plain"] += 1
    return counts


def _which_prompt(k_row: Tensor, to_k, prompts: list[ExpectedPrompt]) -> ExpectedPrompt:
    """The prompt whose projected context (tiled to this call's length) is this chunk's keys."""
    for prompt in prompts:
        with torch.no_grad():
            keys = to_k(prompt.context.to(k_row.dtype))[0]
        if k_row.shape[0] % keys.shape[0]:
            continue
        tiled = keys.repeat(k_row.shape[0] // keys.shape[0], 1)
        if torch.allclose(tiled, k_row, rtol=1e-4, atol=1e-5):
            return prompt
    raise AssertionError("a batch chunk matches none of the prompts")


def _mask_rows(mask: Tensor, call, rows: int, chunks: int) -> Tensor:
    tokens = call.q.shape[1]
    h, w = call.activations_shape[2:4]
    assert h * w == tokens
    mask = mask if mask.ndim == 3 else mask[None]
    resized = F.interpolate(mask[:, None].double(), size=(h, w), mode="bilinear", align_corners=False).flatten(1)
    per_item = torch.stack([resized[min(j, resized.shape[0] - 1)] for j in range(rows)])
    return per_item.repeat(chunks, 1).clamp(0, 1)
