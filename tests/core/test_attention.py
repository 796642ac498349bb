"""The fast nested attention against the literal float64 form of Eq. 1 and Eq. 3."""

from __future__ import annotations

import random

import pytest
import torch
from reference_math import nested_attention_reference, plain_attention_reference
from torch.utils._python_dispatch import TorchDispatchMode

from nested_attention.nested_core.attention import NestedSubject, TokenPositions, nested_attention, plain_attention


def relative_error(fast: torch.Tensor, reference: torch.Tensor) -> float:
    return float((fast.double() - reference).abs().max() / reference.abs().max())


def random_case(seed: int, dtype=torch.float32, max_subjects: int = 4):
    """Random shapes, 1-4 subjects, repeated tokens, tiled contexts and rows without subjects."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batch, heads, dim = rng.randint(1, 3), rng.randint(1, 4), rng.choice([8, 16])
    queries, prompt = rng.randint(5, 40), rng.choice([11, 23, 77])
    tiles = rng.choice([1, 1, 2, 3])
    context = prompt * tiles
    width = heads * dim
    q = torch.randn(batch, queries, width, generator=gen) * 1.5
    k = torch.randn(batch, context, width, generator=gen) * 1.5
    v = torch.randn(batch, context, width, generator=gen)
    free = list(range(1, prompt))
    rng.shuffle(free)
    subjects, specs = [], []
    for _ in range(rng.randint(1, max_subjects)):
        occurrences = [free.pop() for _ in range(rng.randint(1, 2))]  # a token repeated
        per_row = []
        for _row in range(batch):
            present = rng.random() < 0.7
            per_row.append([p + t * prompt for p in occurrences for t in range(tiles)] if present else [])
        tokens = rng.randint(1, 8)
        rows = rng.choice([1, batch])
        keys = torch.randn(rows, tokens, width, generator=gen) * 1.5
        values = torch.randn(rows, tokens, width, generator=gen)
        weight = rng.choice([1.0, 1.0, 0.5, 1.7])
        mask = torch.rand(rng.choice([1, batch]), queries, generator=gen) if rng.random() < 0.3 else None
        specs.append(dict(keys=keys, values=values, positions=per_row, weight=weight, mask=mask))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    for spec in specs:
        spec["keys"], spec["values"] = spec["keys"].to(dtype), spec["values"].to(dtype)
        subjects.append(
            NestedSubject(
                spec["keys"], spec["values"], TokenPositions.from_lists(spec["positions"]), spec["weight"], spec["mask"]
            )
        )
    return q, k, v, heads, subjects, specs


@pytest.mark.parametrize("seed", range(16))
def test_fp32_matches_the_literal_per_query_value_form(seed):
    q, k, v, heads, subjects, specs = random_case(seed)
    fast = nested_attention(q, k, v, heads, subjects)
    assert fast.dtype == q.dtype and fast.shape == q.shape
    assert relative_error(fast, nested_attention_reference(q, k, v, heads, specs)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(4))
def test_half_precision_matches_within_1e_2(dtype, seed):
    q, k, v, heads, subjects, specs = random_case(100 + seed, dtype)
    fast = nested_attention(q, k, v, heads, subjects)
    assert fast.dtype == dtype
    assert relative_error(fast, nested_attention_reference(q, k, v, heads, specs)) <= 1e-2


def test_plain_attention_matches_reference():
    q, k, v, heads, _, _ = random_case(7)
    assert relative_error(plain_attention(q, k, v, heads), plain_attention_reference(q, k, v, heads)) <= 1e-5


def test_no_positions_returns_the_base_output_itself():
    q, k, v, heads, subjects, _ = random_case(3)
    empty = [
        NestedSubject(s.keys, s.values, TokenPositions.from_lists([[] for _ in range(q.shape[0])])) for s in subjects
    ]
    base = plain_attention(q, k, v, heads)
    assert nested_attention(q, k, v, heads, empty, base=base) is base
    assert torch.equal(nested_attention(q, k, v, heads, []), base)


def test_rows_without_a_subject_are_bit_identical():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(3, 9, 32, generator=gen),
        torch.randn(3, 77, 32, generator=gen),
        torch.randn(3, 77, 32, generator=gen),
    )
    subject = NestedSubject(
        torch.randn(1, 4, 32, generator=gen),
        torch.randn(1, 4, 32, generator=gen),
        TokenPositions.from_lists([[], [5], []]),
    )
    base = plain_attention(q, k, v, 2)
    out = nested_attention(q, k, v, 2, [subject], base=base)
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.allclose(out[1], base[1])


def test_nested_values_equal_to_the_class_value_give_plain_attention():
    """If every nested value equals V[s*], v*_q = V[s*] for every query: nothing changes."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(2, 12, 32, generator=gen),
        torch.randn(2, 77, 32, generator=gen),
        torch.randn(2, 77, 32, generator=gen),
    )
    positions = [[4, 81 - 77], [9]]
    v[1, 9] = v[0, 4]
    same = v[0, 4].expand(1, 6, 32).clone()
    subject = NestedSubject(torch.randn(1, 6, 32, generator=gen), same, TokenPositions.from_lists(positions))
    torch.testing.assert_close(
        nested_attention(q, k, v, 4, [subject]), plain_attention(q, k, v, 4), rtol=1e-5, atol=1e-6
    )


def test_weight_zero_is_plain_attention_and_weight_scales_linearly():
    q, k, v, heads, subjects, _ = random_case(11, max_subjects=1)
    base = plain_attention(q, k, v, heads)
    s = subjects[0]
    zero = nested_attention(q, k, v, heads, [NestedSubject(s.keys, s.values, s.positions, 0.0)])
    torch.testing.assert_close(zero, base)
    one = nested_attention(q, k, v, heads, [NestedSubject(s.keys, s.values, s.positions, 1.0)])
    two = nested_attention(q, k, v, heads, [NestedSubject(s.keys, s.values, s.positions, 2.0)])
    torch.testing.assert_close(two - base, 2 * (one - base), rtol=1e-4, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces, and every output shape."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                self.shapes.append(tuple(t.shape))
        return out


def test_no_per_query_value_tensor_and_no_full_logits():
    """Extra tensors stay [R, H, Lq, D]-sized: nothing of size Lq x Lctx x D or Lq x Lctx."""
    batch, heads, dim, queries, context, tokens = 2, 4, 16, 256, 154, 16
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(batch, queries, heads * dim, generator=gen)
    k, v = (
        torch.randn(batch, context, heads * dim, generator=gen),
        torch.randn(batch, context, heads * dim, generator=gen),
    )
    subjects = [
        NestedSubject(
            torch.randn(1, tokens, heads * dim, generator=gen),
            torch.randn(1, tokens, heads * dim, generator=gen),
            TokenPositions.from_lists([[3 + i, 80 + i], [3 + i, 80 + i]]),
        )
        for i in range(4)
    ]
    base = plain_attention(q, k, v, heads)
    with LargestTensor() as watch:
        nested_attention(q, k, v, heads, subjects, base=base)
    output_size = batch * heads * queries * dim
    assert watch.largest <= output_size, (watch.largest, output_size)
    assert not any(len(s) == 5 for s in watch.shapes)
    assert not any(s[-2:] == (queries, context) for s in watch.shapes)


def test_gradients_reach_the_nested_keys_and_values():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 5, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(2, 7, 8, dtype=torch.float64, generator=gen)
    v = torch.randn(2, 7, 8, dtype=torch.float64, generator=gen)
    keys = torch.randn(1, 3, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    values = torch.randn(1, 3, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    positions = TokenPositions.from_lists([[2], []])

    def run(q, keys, values):
        return nested_attention(q, k, v, 2, [NestedSubject(keys, values, positions)])

    assert torch.autograd.gradcheck(run, (q, keys, values))
