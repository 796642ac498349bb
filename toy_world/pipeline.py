"""The toy world's whole pipeline: world -> VAE -> UNet -> reader -> three adapters -> evaluation."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from nested_attention.nested_core.checkpoint import save_native
from nested_attention.nested_train.config import TrainConfig
from nested_attention.nested_train.loop import Trainer

from . import figures
from .baselines import PATCH_CLASSES
from .evaluate import METHODS, load_kit, single_subject_scores, two_subject_scores
from .models import ToyParts, build_vae, save_weights, vae_state
from .reader import accuracy, train_reader
from .train_base import latent_pool, train_unet, train_vae
from .world import WORD, random_scene, render, split_identities

ADAPTER_SETTINGS = dict(
    num_tokens=8,
    qformer_dim=64,
    qformer_depth=2,
    qformer_heads=4,
    qformer_head_dim=16,
    resolution=64,
    lr=1e-3,
    drop_text=0.05,
    same_image_reference=0.3,
    log_every=50,
    save_every=0,
    progress=False,
    device="cpu",
    caption_template="a {word}",
)
WEIGHTS_SWEEP = (0.25, 0.5, 1.0, 1.5, 2.0)


def run_pipeline(settings: dict, weights: Path, results: Path, seed: int, log: Callable[[str], None]) -> dict:
    results.mkdir(parents=True, exist_ok=True)
    train_ids, held_out = split_identities(seed)
    log(f"world: {len(train_ids)} training identities, {len(held_out)} held out")

    taesd = train_vae(train_ids, settings["vae_steps"], seed=seed, log=log)
    save_weights(weights, "vae.safetensors", vae_state(taesd))
    vae = build_vae(load_file(weights / "vae.safetensors"))
    latents, captions = latent_pool(vae.first_stage_model, train_ids, settings["pool"], seed=seed + 1)
    unet = train_unet(latents, captions, settings["unet_steps"], seed=seed, log=log)
    save_weights(weights, "unet.safetensors", unet.model.diffusion_model.state_dict())

    reader = train_reader(settings["reader_steps"], seed=seed, log=log)
    save_weights(weights, "reader.safetensors", reader.state_dict())
    instrument = accuracy(reader)
    log(f"reader accuracy on clean scenes: {instrument}")

    adapter_paths = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = export_training_data(Path(scratch) / "data", train_ids, settings["photos_per_identity"], seed)
        for method, cls in PATCH_CLASSES.items():
            adapter_paths[method] = train_adapter(
                method, cls, data, weights, Path(scratch) / method, settings, seed, log
            )

    kit = load_kit(weights, adapter_paths)
    identities = held_out[: settings["eval_identities"]]
    main = single_subject_scores(kit, identities, settings["eval_prompts"], seed + 7, log=log)
    sweep = single_subject_scores(
        kit, held_out[: settings["sweep_identities"]], 1, seed + 8, methods=METHODS[1:], weights=WEIGHTS_SWEEP, log=log
    )
    rng = random.Random(seed + 9)
    pairs = [tuple(rng.sample(list(held_out), 2)) for _ in range(settings["pairs"])]
    two = two_subject_scores(kit, pairs, seed + 10, log=log)

    figures.examples_grid(main["examples"], results / "single_subject.png")
    figures.two_subject_grid(two["examples"], results / "two_subjects.png")
    report = {
        "settings": settings,
        "seed": seed,
        "reader_accuracy": instrument,
        "single_subject": {f"{m}@{w}": s for (m, w), s in main["scores"].items()},
        "sweep": {f"{m}@{w}": s for (m, w), s in sweep["scores"].items()},
        "two_subjects": two["scores"],
    }
    write_report(report, results)
    return report


def write_report(report: dict, results: Path) -> None:
    """results.md and the trade-off curve, from the numbers alone (``python -m toy_world report``)."""
    figures.sweep_curve(report["sweep"], report["single_subject"]["none@0.0"], results / "tradeoff.png")
    (results / "results.md").write_text(figures.markdown(report))


def export_training_data(folder: Path, identities, photos: int, seed: int) -> Path:
    """One folder per training identity: scenes of it with their captions (the trainer's layout)."""
    rng = random.Random(seed + 3)
    for identity in identities:
        subject = folder / f"id_{identity.index:03d}"
        subject.mkdir(parents=True)
        for number in range(photos):
            scene = random_scene(rng, identities, identity=identity)
            Image.fromarray((render(scene) * 255).astype(np.uint8)).save(subject / f"{number}.png")
            (subject / f"{number}.txt").write_text(scene.caption)
    return folder


def train_adapter(
    method: str,
    patch_class,
    data: Path,
    weights: Path,
    output: Path,
    settings: dict,
    seed: int,
    log: Callable[[str], None],
) -> Path:
    config = TrainConfig(
        **ADAPTER_SETTINGS,
        data=str(data),
        class_word=WORD,
        output=str(output),
        steps=settings["adapter_steps"],
        batch_size=settings["adapter_batch"],
        seed=seed,
    )
    log(f"training the {method} adapter ({config.steps} steps of {config.batch_size})")
    trainer = Trainer(config, ToyParts(weights), patch_class=patch_class)
    trainer.train()
    target = weights / f"adapter_{method}.safetensors"
    save_native(target, trainer.adapter.config, trainer.adapter.state_dict(), dtype=torch.float16)
    return target
