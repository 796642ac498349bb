"""Measuring personalisation in the toy world, through the nodes' own inference path.

For held-out identities (never seen by the base model, the VAE or any adapter): encode a reference
photo with Encode Subject, bind it to its class word with Apply Nested Attention (then swap the
attention variant for the baselines), sample a scene caption, and let the world reader read the
image back. Per image, in [0, 1]:

* identity: the fraction of the reference's shape, pattern and palette found;
* prompt alignment: the fraction of the caption's class, background and position found.

Every number is a mean over images with its standard error (the spread of the per-image scores
over the square root of their count).

Two subjects: "... on the left a robot and on the right a flower": references of different classes
bound to their words, or of one class bound to the word's 1st and 2nd occurrence; without or with
left/right region masks. Each object is scored against its own reference and the other one's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import comfy.sample
import numpy as np
import torch

from nested_attention.nodes.adapter_runtime import LoadedAdapter, load_adapter
from nested_attention.nodes.apply_subject import apply_subject
from nested_attention.nodes.encode import encode_subject
from nested_attention.nodes.text_encode import encode_prompt

from .baselines import with_variant
from .reader import PAIR, SINGLE, WorldReader, load_reader, read, shape_id
from .world import BACKGROUNDS, POSITIONS, SHAPES_PER_CLASS, Identity, Scene, subject_photo

METHODS = ("none", "nested", "decoupled", "single-token")
#: "ipa-as-nested": the decoupled adapter's file in the IP-Adapter-Plus layout, loaded by Load Nested
#: Adapter and applied as a nested adapter (what a user with only IP-Adapter-Plus files does).
PATCH_OF = {"nested": "nested", "decoupled": "decoupled", "single-token": "single-token", "ipa-as-nested": "nested"}
Log = Callable[[str], None]


@dataclass
class Toolkit:
    model: object
    clip: object
    vae: object
    vision: object
    reader: WorldReader
    adapters: dict[str, LoadedAdapter]  # method -> adapter
    steps: int = 20
    cfg: float = 3.0


def load_kit(weights: Path, adapters: dict[str, Path]) -> Toolkit:
    """The committed (or freshly trained) models in ``weights`` with the given adapter files."""
    from .models import build_clip_vision, load_toy

    loaded = {method: load_adapter(str(path), path.name) for method, path in adapters.items()}
    return Toolkit(*load_toy(weights), build_clip_vision(), load_reader(weights), loaded)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error."""
    array = np.asarray(values, dtype=np.float64)
    spread = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), spread / math.sqrt(max(len(array), 1))


def sample(kit: Toolkit, model, caption: str, seed: int) -> torch.Tensor:
    """One image [64, 64, 3] from the model through ComfyUI's sampler and VAE."""
    latent = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        samples = comfy.sample.sample(
            model,
            comfy.sample.prepare_noise(latent, seed),
            kit.steps,
            kit.cfg,
            "euler",
            "normal",
            encode_prompt(kit.clip, caption),
            encode_prompt(kit.clip, ""),
            latent,
            seed=seed,
            disable_pbar=True,
        )
        return kit.vae.decode(samples)[0].float().clamp(0, 1)


def personalised(
    kit: Toolkit,
    method: str,
    references: Sequence[tuple[np.ndarray, str]],
    weight: float = 1.0,
    masks: Optional[Sequence[torch.Tensor]] = None,
    occurrences: Optional[Sequence[int]] = None,
):
    """The model with one subject per (photo, word): each bound to its word (or to the given
    occurrence of it), optionally limited to a region mask."""
    if method == "none":
        return kit.model
    adapter = kit.adapters[method]
    model = kit.model
    for number, (photo, word) in enumerate(references):
        subject = encode_subject(adapter, kit.vision, torch.from_numpy(photo)[None])
        model = apply_subject(
            model,
            adapter,
            subject,
            word,
            weight=weight,
            occurrence=occurrences[number] if occurrences else 0,
            attn_mask=masks[number] if masks is not None else None,
        )
    return with_variant(model, PATCH_OF[method])


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
    log: Log = print,
) -> dict:
    """{(method, weight): {attribute: (mean, se), ..., "n": images}} and example images."""
    jobs = single_subject_jobs(identities, prompts_per_identity, seed)
    results, examples = {}, {}
    for method in methods:
        for weight in weights if method != "none" else (0.0,):
            images = torch.stack(
                [
                    sample(kit, personalised(kit, method, [(photo, identity.word)], weight), scene.caption, seed)
                    for identity, photo, scene, seed in jobs
                ]
            )
            reads = read(kit.reader, images, SINGLE)
            results[(method, weight)] = single_scores(reads, [j[0] for j in jobs], [j[2] for j in jobs])
            examples[(method, weight)] = (images[:8], [j[1] for j in jobs[:8]], [j[2].caption for j in jobs[:8]])
            identity, prompt = results[(method, weight)]["identity"], results[(method, weight)]["prompt"]
            log(f"{method} w={weight}: identity {identity[0]:.3f} ± {identity[1]:.3f}, prompt {prompt[0]:.3f}")
    return {"scores": results, "examples": examples}


def single_subject_jobs(identities: Sequence[Identity], prompts: int, seed: int) -> list[tuple]:
    """(identity, reference photo, scene, sampling seed) per image: one reference per identity, in
    ``prompts`` scenes at random places on random backgrounds."""
    rng = random.Random(seed)
    jobs = []
    for identity in identities:
        photo = subject_photo(identity, rng)
        for _ in range(prompts):
            scene = Scene((identity,), rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)))
            jobs.append((identity, photo, scene, rng.randrange(2**31)))
    return jobs


def single_scores(reads: dict, identities: Sequence[Identity], scenes: Sequence[Scene]) -> dict:
    """Per attribute and per summary, (mean, se) over the images."""
    hits = single_hits(reads, identities, scenes)
    scores = {name: mean_se(values) for name, values in hits.items()}
    scores["n"] = len(identities)
    return scores


def single_hits(reads: dict, identities: Sequence[Identity], scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    """Per attribute and per summary, the per-image score (1 = found, 0 = not)."""
    found = {name: reads[name].tolist() for name in SINGLE}
    hits = {
        "shape": [f == shape_id(i) for f, i in zip(found["shape"], identities)],
        "pattern": [f == i.pattern for f, i in zip(found["pattern"], identities)],
        "palette": [f == i.palette for f, i in zip(found["palette"], identities)],
        "class": [f // SHAPES_PER_CLASS == i.cls for f, i in zip(found["shape"], identities)],
        "background": [f == list(BACKGROUNDS).index(s.background) for f, s in zip(found["background"], scenes)],
        "position": [f == list(POSITIONS).index(s.position) for f, s in zip(found["position"], scenes)],
    }
    scored = {name: np.asarray(values, dtype=np.float64) for name, values in hits.items()}
    scored["identity"] = np.mean([scored["shape"], scored["pattern"], scored["palette"]], axis=0)
    scored["prompt"] = np.mean([scored["class"], scored["background"], scored["position"]], axis=0)
    return scored


def two_subject_scores(
    kit: Toolkit,
    pairs: Sequence[tuple[Identity, Identity]],
    seed: int,
    variants: Sequence[tuple[str, bool]],
    log: Log = print,
) -> dict:
    """For each (method, with masks): own and other identity of each object, its class and the
    background, (mean, se) over the objects (two per image). Pairs of one class are bound to the
    word's 1st and 2nd occurrence, pairs of two classes to their words."""
    rng = random.Random(seed)
    jobs = []
    for left, right in pairs:
        photos = [subject_photo(left, rng), subject_photo(right, rng)]
        jobs.append((left, right, photos, Scene((left, right), rng.choice(list(BACKGROUNDS))), rng.randrange(2**31)))
    results, examples = {}, {}
    for method, masked in variants:
        name = method + (" + masks" if masked else "")
        images = []
        for left, right, photos, scene, seed in jobs:
            occurrences = (1, 2) if left.cls == right.cls else None
            references = [(photos[0], left.word), (photos[1], right.word)]
            model = personalised(
                kit, method, references, masks=half_masks() if masked else None, occurrences=occurrences
            )
            images.append(sample(kit, model, scene.caption, seed))
        images = torch.stack(images)
        reads = read(kit.reader, images, PAIR)
        own, other, classes, background = [], [], [], []
        for i, (left, right, _, scene, _) in enumerate(jobs):
            for side, mine, theirs in (("left", left, right), ("right", right, left)):
                found = (
                    int(reads[f"{side}_shape"][i]),
                    int(reads[f"{side}_pattern"][i]),
                    int(reads[f"{side}_palette"][i]),
                )
                own.append(np.mean([a == b for a, b in zip(found, (shape_id(mine), mine.pattern, mine.palette))]))
                other.append(
                    np.mean([a == b for a, b in zip(found, (shape_id(theirs), theirs.pattern, theirs.palette))])
                )
                classes.append(found[0] // SHAPES_PER_CLASS == mine.cls)
            background.append(int(reads["background"][i]) == list(BACKGROUNDS).index(scene.background))
        results[name] = {
            "own": mean_se(own),
            "other": mean_se(other),
            "own_minus_other": mean_se(np.subtract(own, other)),
            "class": mean_se(classes),
            "background": mean_se(background),
            "n": len(jobs),
        }
        examples[name] = (images[:6], [j[2] for j in jobs[:6]], [j[3].caption for j in jobs[:6]])
        own_score, other_score = results[name]["own"], results[name]["other"]
        log(f"two subjects, {name}: own {own_score[0]:.3f} ± {own_score[1]:.3f}, other {other_score[0]:.3f}")
    return {"scores": results, "examples": examples}


def pairs_of(
    identities: Sequence[Identity], count: int, same_class: bool, seed: int
) -> list[tuple[Identity, Identity]]:
    """``count`` (left, right) pairs of distinct held-out identities, of one class or of two."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        left, right = rng.sample(list(identities), 2)
        if (left.cls == right.cls) == same_class:
            pairs.append((left, right))
    return pairs
