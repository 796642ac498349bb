"""Nested attention under torch.compile: the same image as without compilation, the subject acting.

ComfyUI's TorchCompileModel node calls ``comfy_api.torch_helpers.set_torch_compile_wrapper`` on the
diffusion model; the test does the same, with the ``aot_eager`` backend, which runs Dynamo's tracing
of the patch and the UNet (where graph breaks and guards happen) without Inductor's C++ code
generation (minutes on a CPU). The node itself with Inductor runs when NESTED_SLOW=1.
"""

from __future__ import annotations

import os

import comfy.sample
import pytest
import torch
from comfy_api.torch_helpers import set_torch_compile_wrapper

from nested_attention.nested_core.subject import load_subject
from nested_attention.nodes.adapter_runtime import load_adapter
from nested_attention.nodes.apply_subject import apply_subject
from nested_attention.nodes.text_encode import encode_prompt
from nested_dev import tiny_models


def sample(model, clip, steps=3):
    latent = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        return comfy.sample.sample(
            model,
            comfy.sample.prepare_noise(latent, 0),
            steps,
            5.0,
            "euler",
            "normal",
            encode_prompt(clip, "a photo of a person on a beach"),
            encode_prompt(clip, "blurry"),
            latent,
            seed=0,
        )


def personalised(assets):
    adapter = load_adapter(str(assets / "nested_adapters" / "sdxl_person.safetensors"))
    subject = load_subject(str(assets / "nested_subjects" / "sdxl_person_s1.safetensors"))
    plain = tiny_models.build_unet("sdxl", seed=0)
    return plain, apply_subject(plain, adapter, subject, "person")


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(os.environ.get("NESTED_SLOW") != "1", reason="Inductor takes minutes on a CPU"),
        ),
    ],
)
def test_a_compiled_model_gives_the_same_image_with_the_subject(pack, assets, backend):
    import torch._dynamo

    torch._dynamo.reset()
    clip = tiny_models.build_clip("sdxl", 0)
    plain, model = personalised(assets)
    eager = sample(model, clip)
    compiled_model = model.clone()
    set_torch_compile_wrapper(compiled_model, backend=backend)
    compiled = sample(compiled_model, clip)
    torch._dynamo.reset()
    effect = (eager - sample(plain, clip)).abs().max()
    assert effect > 0.05, "the subject must change the image"
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3 * float(effect))
