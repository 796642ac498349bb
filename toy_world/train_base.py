"""Training the toy world's VAE (TAESD), and its UNet (SD1.5 family) together with its text encoder.

The base model must have the property nested attention builds on: a class word's cross-attention
lands on its object. Large text-to-image models learn that from their data; a model this small,
trained for minutes, does not (measured: the word took 2.4 % of the attention on its object and
1.3 % on the background). So, besides the diffusion loss, the base training supervises where the
class words attend, as FastComposer (Xiao et al. 2023) does when it fine-tunes its base model: for
every class word of a caption, a balanced loss lowers its mean attention (averaged over heads, in
every cross-attention layer) on the background cells and raises it on its own object's cells:
``mean_background(a) − mean_object(a)``. Only the base model is trained so; the adapters are
trained afterwards with the diffusion loss alone.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from comfy.ldm.modules.attention import optimized_attention
from torch import Tensor

from nested_attention.nested_core.heads import split_heads
from nested_attention.nested_train.objective import diffusion_loss
from nested_attention.nodes.model_layers import attn2_sites

from .models import build_clip, build_unet, codec_taesd, text_forward, token_ids
from .world import CLASSES, Identity, Scene, object_mask, random_scene, render

Log = Callable[[str], None]
MAX_WORDS = 2  # class words per caption (a scene has one or two objects)


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
    batch: int = 256,
    describe_probability: float = 0.5,
    pair_probability: float = 0.3,
) -> tuple[Tensor, list[Scene]]:
    """Scaled latents [count, 4, 8, 8] (what the UNet denoises) of random scenes, and the scenes."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, identities, pair_probability, None, describe_probability) for _ in range(count)]
    latents = [
        taesd.taesd_encoder(torch.from_numpy(np.stack([render(s) for s in scenes[i : i + batch]])).permute(0, 3, 1, 2))
        for i in range(0, count, batch)
    ]
    return torch.cat(latents), scenes


class GroundingLoss:
    """An attn2 replacement for the base model's training: the layer's ordinary attention, plus the
    grounding term of the batch's class words (see the module docstring), collected in ``terms``."""

    def __init__(self) -> None:
        self.index: Tensor | None = None  # [B, W] context position of each class word (W = MAX_WORDS)
        self.valid: Tensor | None = None  # [B, W] which entries are real
        self.masks: Tensor | None = None  # [B, W, 8, 8] each word's object cells
        self.terms: list[Tensor] = []
        self.object_share: list[float] = []  # mean attention on the object, for the log

    def set_batch(self, index: Tensor, valid: Tensor, masks: Tensor) -> None:
        self.index, self.valid, self.masks = index, valid, masks
        self.terms, self.object_share = [], []

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]
        out = optimized_attention(q, k, v, heads)
        batch, queries, width = q.shape
        dim, context, words = width // heads, k.shape[1], self.index.shape[1]
        picks = torch.zeros(batch, context, dim, dtype=q.dtype)  # one-hot columns at the words' positions
        picks[torch.arange(batch)[:, None], self.index, torch.arange(words)[None]] = self.valid.to(q.dtype)
        values = picks[:, None].expand(batch, heads, context, dim)
        share = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), values)
        share = share[..., :words].mean(1)  # [B, Lq, W]: each word's attention, averaged over heads
        side = math.isqrt(queries)
        inside = F.adaptive_avg_pool2d(self.masks.flatten(0, 1)[:, None], (side, side)).view(batch, words, queries)
        inside = inside.transpose(1, 2)  # [B, Lq, W], the fraction of each cell the object covers
        on = (share * inside).sum(1) / inside.sum(1).clamp_min(1e-6)
        off = (share * (1 - inside)).sum(1) / (1 - inside).sum(1).clamp_min(1e-6)
        count = self.valid.sum().clamp_min(1)
        self.terms.append(((off - on) * self.valid).sum() / count)
        self.object_share.append(float(((on * self.valid).sum() / count).detach()))
        return out


def class_words(ids: Sequence[int], word_ids: dict[int, str]) -> list[int]:
    """Context positions of the class words in a caption's token ids, in order (left, right)."""
    return [position for position, token in enumerate(ids) if token in word_ids][:MAX_WORDS]


def train_base_model(
    latents: Tensor,
    scenes: list[Scene],
    steps: int,
    batch: int = 64,
    seed: int = 0,
    grounding_weight: float = 0.1,
    drop_caption: float = 0.1,
    log: Log = print,
):
    """eps-prediction diffusion on the latent pool, the UNet and the text encoder trained together;
    returns (model, clip)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_unet(seed=seed)
    unet = model.model.diffusion_model
    unet.requires_grad_(True).train()
    clip = build_clip()
    text = clip.cond_stage_model.clip_l
    text.requires_grad_(True).train()
    word_ids = {token_ids(clip, word)[1]: word for word in CLASSES}
    captions = [s.caption for s in scenes]
    ids = {c: token_ids(clip, c) for c in set(captions) | {""}}
    grounding = GroundingLoss()
    options = {"patches_replace": {"attn2": {tuple(key): grounding for key in attn2_sites(model)}}}
    sampling = model.get_model_object("model_sampling")
    parameters = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    started = time.time()
    for step in range(steps):
        picks = [rng.randrange(len(scenes)) for _ in range(batch)]
        chosen = ["" if rng.random() < drop_caption else captions[i] for i in picks]
        index = torch.zeros(batch, MAX_WORDS, dtype=torch.long)
        valid = torch.zeros(batch, MAX_WORDS, dtype=torch.bool)
        masks = torch.zeros(batch, MAX_WORDS, 8, 8)
        for row, (i, caption) in enumerate(zip(picks, chosen)):
            for which, position in enumerate(class_words(ids[caption], word_ids)):
                index[row, which], valid[row, which] = position, True
                masks[row, which] = torch.from_numpy(object_mask(scenes[i], which)).float()
        grounding.set_batch(index, valid, masks)
        context = text_forward(clip, torch.tensor([ids[c] for c in chosen]))
        x0 = latents[picks]
        sigma = sampling.sigmas[torch.randint(0, len(sampling.sigmas), (batch,))].float()
        noisy = sampling.noise_scaling(sigma, torch.randn_like(x0), x0)
        x0_pred = model.model.apply_model(noisy, sigma, c_crossattn=context, transformer_options=options)
        loss = diffusion_loss(sampling, x0_pred, x0, sigma).mean()
        grounded = torch.stack(grounding.terms).mean()
        optimizer.zero_grad()
        (loss + grounding_weight * grounded).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"base model step {step}: diffusion loss {loss.item():.4f}, class words' attention on their "
                f"objects {np.mean(grounding.object_share):.3f} ({time.time() - started:.0f} s)"
            )
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    return model, clip
