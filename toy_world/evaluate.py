"""Measuring personalisation in the toy world, through the nodes' own inference path.

For held-out identities (never seen by the UNet, the VAE or any adapter): encode a reference photo
with Encode Subject, bind it with Apply Nested Attention (then swap the attention variant for the
baselines), sample a scene caption, and let the world reader read the image back:

* identity: the fraction of the reference's shape, pattern and palette found in the image;
* prompt alignment: the fraction of the caption's background and position found.

Two subjects: references bound to the 1st and 2nd "creature" of "a creature on the left and a
creature on the right, ..." (without, then with, left/right region masks); each side is scored
against its own reference and the other one's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import comfy.sample
import numpy as np
import torch

from nested_attention.nodes.adapter_runtime import load_adapter
from nested_attention.nodes.apply_subject import apply_subject
from nested_attention.nodes.encode import encode_subject
from nested_attention.nodes.text_encode import encode_prompt

from .baselines import with_variant
from .reader import PAIR, SINGLE, WorldReader, load_reader, read
from .world import BACKGROUNDS, POSITIONS, WORD, Identity, Scene, subject_photo

METHODS = ("none", "nested", "decoupled", "single-token")


@dataclass
class Toolkit:
    model: object
    clip: object
    vae: object
    vision: object
    reader: WorldReader
    adapters: dict  # method -> LoadedAdapter
    steps: int = 20
    cfg: float = 3.0


def load_kit(weights: Path, adapters: dict[str, Path]) -> Toolkit:
    """The committed (or freshly trained) models in ``weights`` with the given adapter files."""
    from .models import build_clip_vision, load_toy

    return Toolkit(*load_toy(weights), build_clip_vision(), load_reader(weights), load_adapters(adapters))


def load_adapters(paths: dict[str, Path]) -> dict:
    return {method: load_adapter(str(path), path.name) for method, path in paths.items()}


def sample(kit: Toolkit, model, caption: str, seed: int) -> torch.Tensor:
    """One image [64, 64, 3] from the model through ComfyUI's sampler and VAE."""
    positive = encode_prompt(kit.clip, caption)
    negative = encode_prompt(kit.clip, "")
    latent = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        samples = comfy.sample.sample(
            model,
            comfy.sample.prepare_noise(latent, seed),
            kit.steps,
            kit.cfg,
            "euler",
            "normal",
            positive,
            negative,
            latent,
            seed=seed,
            disable_pbar=True,
        )
        return kit.vae.decode(samples)[0].float().clamp(0, 1)


def personalised(
    kit: Toolkit,
    method: str,
    references: Sequence[np.ndarray],
    weight: float = 1.0,
    masks: Optional[Sequence[torch.Tensor]] = None,
):
    """The model with one subject per reference (occurrence 1, 2, ... of the word), optionally each
    limited to a region mask."""
    if method == "none":
        return kit.model
    adapter = kit.adapters[method]
    model = kit.model
    for number, photo in enumerate(references, start=1):
        subject = encode_subject(adapter, kit.vision, torch.from_numpy(photo)[None])
        occurrence = number if len(references) > 1 else 0
        model = apply_subject(
            model,
            adapter,
            subject,
            WORD,
            weight=weight,
            occurrence=occurrence,
            attn_mask=masks[number - 1] if masks is not None else None,
        )
    return with_variant(model, method)


def half_masks() -> list[torch.Tensor]:
    """Left-half and right-half region masks [1, 64, 64]."""
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1.0
    return [left, 1.0 - left]


def single_subject_scores(
    kit: Toolkit,
    identities: Sequence[Identity],
    prompts_per_identity: int,
    seed: int,
    methods: Sequence[str] = METHODS,
    weights: Sequence[float] = (1.0,),
    log: Callable[[str], None] = print,
) -> dict:
    """{(method, weight): {"identity": .., "prompt": .., per attribute .., "n": ..}} and example images."""
    rng = random.Random(seed)
    jobs = []
    for identity in identities:
        photo = subject_photo(identity, rng)
        for _ in range(prompts_per_identity):
            scene = Scene((identity,), rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)))
            jobs.append((identity, photo, scene, rng.randrange(2**31)))
    results, examples = {}, {}
    for method in methods:
        for weight in weights if method != "none" else (0.0,):
            images = []
            for _, photo, scene, noise_seed in jobs:
                model = personalised(kit, method, [photo], weight)
                images.append(sample(kit, model, scene.caption, noise_seed))
            batch = torch.stack(images)
            reads = read(kit.reader, batch, SINGLE)
            scores = _single_scores(reads, [j[0] for j in jobs], [j[2] for j in jobs])
            results[(method, weight)] = scores
            examples[(method, weight)] = (batch[:8], [j[1] for j in jobs[:8]], [j[2].caption for j in jobs[:8]])
            log(f"{method} w={weight}: identity {scores['identity']:.3f}, prompt {scores['prompt']:.3f}")
    return {"scores": results, "examples": examples}


def two_subject_scores(
    kit: Toolkit,
    pairs: Sequence[tuple[Identity, Identity]],
    seed: int,
    methods: Sequence[str] = METHODS,
    log: Callable[[str], None] = print,
) -> dict:
    rng = random.Random(seed)
    jobs = []
    for left, right in pairs:
        photos = [subject_photo(left, rng), subject_photo(right, rng)]
        scene = Scene((left, right), rng.choice(list(BACKGROUNDS)))
        jobs.append((left, right, photos, scene, rng.randrange(2**31)))
    results, examples = {}, {}
    variants = [(m, None) for m in methods] + [(m, half_masks()) for m in methods if m != "none"]
    for method, masks in variants:
        name = method if masks is None else f"{method} + masks"
        images = [
            sample(kit, personalised(kit, method, photos, masks=masks), scene.caption, noise_seed)
            for _, _, photos, scene, noise_seed in jobs
        ]
        batch = torch.stack(images)
        reads = read(kit.reader, batch, PAIR)
        own, cross, background = [], [], []
        for i, (left, right, _, scene, _) in enumerate(jobs):
            for side, mine, other in (("left", left, right), ("right", right, left)):
                found = (
                    int(reads[f"{side}_shape"][i]),
                    int(reads[f"{side}_pattern"][i]),
                    int(reads[f"{side}_palette"][i]),
                )
                own.append(np.mean([a == b for a, b in zip(found, (mine.shape, mine.pattern, mine.palette))]))
                cross.append(np.mean([a == b for a, b in zip(found, (other.shape, other.pattern, other.palette))]))
            background.append(int(reads["background"][i]) == list(BACKGROUNDS).index(scene.background))
        results[name] = {
            "own": float(np.mean(own)),
            "other": float(np.mean(cross)),
            "background": float(np.mean(background)),
            "n": len(jobs),
        }
        examples[name] = (batch[:6], [j[2] for j in jobs[:6]], [j[3].caption for j in jobs[:6]])
        log(f"two subjects, {name}: own {results[name]['own']:.3f}, other {results[name]['other']:.3f}")
    return {"scores": results, "examples": examples}


def _single_scores(reads: dict, identities: Sequence[Identity], scenes: Sequence[Scene]) -> dict:
    attributes = {
        "shape": [i.shape for i in identities],
        "pattern": [i.pattern for i in identities],
        "palette": [i.palette for i in identities],
        "background": [list(BACKGROUNDS).index(s.background) for s in scenes],
        "position": [list(POSITIONS).index(s.position) for s in scenes],
    }
    scores = {name: float((reads[name] == torch.tensor(truth)).float().mean()) for name, truth in attributes.items()}
    scores["identity"] = float(np.mean([scores["shape"], scores["pattern"], scores["palette"]]))
    scores["prompt"] = float(np.mean([scores["background"], scores["position"]]))
    scores["n"] = len(identities)
    return scores
