"""The Q-Former computes IP-Adapter-Plus's resampler function, and the adapter projects per layer."""

from __future__ import annotations

import torch
from core_factories import IPA_QFORMER, TINY_QFORMER, ip_adapter_state, random_adapter
from reference_math import resampler_reference

from nested_attention.nested_core.qformer import QFormer


def test_qformer_matches_the_published_resampler_on_random_weights():
    adapter = random_adapter(IPA_QFORMER, layer_dims=(64,), seed=3).double()
    image_proj = {
        k[len("image_proj.") :]: v for k, v in ip_adapter_state(adapter).items() if k.startswith("image_proj.")
    }
    features = torch.randn(3, 17, IPA_QFORMER.in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = adapter.encode(features)
    reference = resampler_reference(image_proj, features, heads=IPA_QFORMER.heads)
    assert ours.shape == (3, IPA_QFORMER.num_queries, IPA_QFORMER.out_dim)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_attention_maps_are_recorded_per_layer_and_normalised():
    qformer = QFormer(TINY_QFORMER)
    maps: list[torch.Tensor] = []
    qformer(torch.randn(2, 10, TINY_QFORMER.in_dim), maps)
    assert len(maps) == TINY_QFORMER.depth
    for m in maps:
        assert m.shape == (2, TINY_QFORMER.heads, TINY_QFORMER.num_queries, 10 + TINY_QFORMER.num_queries)
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_projection_gives_one_key_value_pair_per_layer():
    adapter = random_adapter(layer_dims=(32, 64, 48))
    tokens = adapter.encode(torch.randn(1, 9, TINY_QFORMER.in_dim))
    pairs = adapter.project(tokens)
    assert [tuple(k.shape) for k, _ in pairs] == [(1, 4, 32), (1, 4, 64), (1, 4, 48)]
    torch.testing.assert_close(pairs[1][1], tokens @ adapter.nested[1].to_v.weight.T)
