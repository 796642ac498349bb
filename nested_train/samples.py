"""Preview images during training, made through the nodes' inference path."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import comfy.sample
import numpy as np
import torch
from PIL import Image

from ..nested_core.checkpoint import save_native
from ..nodes.adapter_runtime import load_adapter
from ..nodes.apply_subject import apply_subject
from ..nodes.encode import encode_subject
from ..nodes.text_encode import encode_prompt


def render_samples(trainer: Any, folder: Path) -> list[Path]:
    """Save the current adapter, load it as Load Nested Adapter would, encode the first subject's
    first photo, bind it, sample each preview prompt and save the images."""
    config, parts = trainer.config, trainer.parts
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "adapter.safetensors"
        save_native(path, trainer.adapter.config, trainer.adapter.state_dict())
        adapter = load_adapter(str(path), f"step {trainer.step}")
    first = trainer.dataset.subjects[0]
    image = torch.from_numpy(trainer.dataset._pixels(first.photos[0].path))[None]
    subject = encode_subject(adapter, parts.clip_vision, image)
    model = apply_subject(parts.model, adapter, subject, first.word)
    negative = encode_prompt(parts.clip, "")
    size = config.resolution // 8
    written = []
    for number, template in enumerate(config.sample_prompts):
        text = template.format(word=first.word)
        positive = encode_prompt(parts.clip, text)
        latent = torch.zeros(1, 4, size, size)
        with torch.no_grad():
            samples = comfy.sample.sample(
                model,
                comfy.sample.prepare_noise(latent, config.seed),
                config.sample_steps,
                5.0,
                "euler",
                "normal",
                positive,
                negative,
                latent,
                seed=config.seed,
            )
            pixels = parts.vae.decode(samples)
        out = folder / f"step_{trainer.step:07d}_{number}.png"
        Image.fromarray((pixels[0].clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)).save(out)
        written.append(out)
    return written
