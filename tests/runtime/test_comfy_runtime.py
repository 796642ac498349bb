"""The harness itself on the real ComfyUI: tiny models sample, and attn2 replacement is faithful."""

from __future__ import annotations

import comfy.sample
import comfy.utils
import pytest
import torch
from comfy.ldm.modules.attention import optimized_attention

from nested_attention.nodes.model_layers import attn2_sites
from nested_dev import tiny_models


def sample(model, kind, steps=3, cfg=5.0, seed=0, batch=1, positive=None, negative=None):
    positive = positive or tiny_models.conditioning(kind, seed=1)
    negative = negative or tiny_models.conditioning(kind, seed=2)
    latent = torch.zeros(batch, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=seed)


@pytest.mark.parametrize("kind,count", [("sd15", 7), ("sdxl", 11)])
def test_pass_through_attn2_replacement_on_every_layer_equals_the_unpatched_run(pack, kind, count):
    model = tiny_models.build_unet(kind, seed=3)
    sites = attn2_sites(model)
    assert len(sites) == count
    calls = []

    def passthrough(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision")
        )

    patched = model.clone()
    for key in sites:
        patched.set_model_attn2_replace(passthrough, *key)
    reference = sample(model, kind)
    assert torch.equal(sample(patched, kind), reference)
    assert len(calls) == 3 * count
    assert torch.equal(sample(model, kind), reference), "the unpatched original must be untouched"
