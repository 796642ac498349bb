"""Training the toy world's VAE (TAESD) and its text-conditioned UNet (SD1.5 family) on the CPU."""

from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import torch

from nested_attention.nested_train.objective import diffusion_loss

from .models import build_clip, build_unet, codec_taesd
from .world import Identity, random_scene, render

Log = Callable[[str], None]


def train_vae(identities: tuple[Identity, ...], steps: int, batch: int = 8, seed: int = 0, log: Log = print):
    """TAESD, started as an exact cell-colour codec (models.codec_taesd), fine-tuned on world images
    for reconstruction; the decoder learns to undo the tanh squeeze at its input."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    taesd = codec_taesd()
    encoder, decoder = taesd.taesd_encoder, taesd.taesd_decoder
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-4, weight_decay=0.0)
    started = time.time()
    for step in range(steps):
        x = torch.from_numpy(np.stack([render(random_scene(rng, identities)) for _ in range(batch)])).permute(
            0, 3, 1, 2
        )
        recon = decoder(encoder(x))
        loss = (recon - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}: reconstruction mse {loss.item():.6f} ({time.time() - started:.0f} s)")
    return taesd.eval().requires_grad_(False)


@torch.no_grad()
def latent_pool(
    taesd,
    identities: tuple[Identity, ...],
    count: int,
    seed: int = 1,
    batch: int = 64,
    describe_probability: float = 0.5,
) -> tuple[torch.Tensor, list[str]]:
    """Scaled latents [count, 4, 8, 8] (what the UNet denoises) of random scenes, and their captions."""
    rng = random.Random(seed)
    latents, captions = [], []
    for start in range(0, count, batch):
        scenes = [
            random_scene(rng, identities, describe_probability=describe_probability)
            for _ in range(min(batch, count - start))
        ]
        x = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2)
        latents.append(taesd.taesd_encoder(x))
        captions += [s.caption for s in scenes]
    return torch.cat(latents), captions


def train_unet(
    latents: torch.Tensor,
    captions: list[str],
    steps: int,
    batch: int = 64,
    seed: int = 0,
    drop_caption: float = 0.1,
    log: Log = print,
):
    """eps-prediction diffusion on the latent pool, conditioned on the frozen random text encoder."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_unet(seed=seed)
    unet = model.model.diffusion_model
    unet.requires_grad_(True).train()
    clip = build_clip()
    contexts = {}
    with torch.no_grad():
        for caption in sorted(set(captions)) + [""]:
            contexts[caption] = clip.encode_from_tokens(clip.tokenize(caption)).float().clone()
    sampling = model.get_model_object("model_sampling")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    started = time.time()
    for step in range(steps):
        picks = [rng.randrange(len(captions)) for _ in range(batch)]
        x0 = latents[picks]
        context = torch.cat([contexts["" if rng.random() < drop_caption else captions[i]] for i in picks])
        timesteps = torch.randint(0, len(sampling.sigmas), (batch,))
        sigma = sampling.sigmas[timesteps].float()
        noise = torch.randn_like(x0)
        noisy = sampling.noise_scaling(sigma, noise, x0)
        x0_pred = model.model.apply_model(noisy, sigma, c_crossattn=context)
        loss = diffusion_loss(sampling, x0_pred, x0, sigma).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    unet.eval().requires_grad_(False)
    return model
