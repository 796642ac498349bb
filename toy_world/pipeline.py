"""The toy world's whole pipeline: world -> VAE -> base model (UNet + text encoder) -> reader ->
three adapters -> grounding check -> evaluation -> report.

The evaluation is fixed here, before any adapter is trained (held-out identities, scenes, seeds,
weights and metrics), and run once on the adapters the run trains.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nested_attention.nested_core.checkpoint import save_native
from nested_attention.nested_core.checkpoint.ipadapter import to_ip_adapter_layout
from nested_attention.nested_train.config import TrainConfig
from nested_attention.nested_train.loop import Trainer

from . import figures
from .baselines import PATCH_CLASSES
from .diagnose import diagnose
from .evaluate import METHODS, load_kit, pairs_of, single_subject_scores, two_subject_scores
from .models import ToyParts, build_vae, save_weights, vae_state
from .reader import accuracy, train_reader
from .train_base import latent_pool, train_base_model, train_vae
from .world import Scene, random_scene, render, split_identities

ADAPTER_SETTINGS = dict(
    num_tokens=8,
    qformer_dim=64,
    qformer_depth=2,
    qformer_heads=2,
    qformer_head_dim=64,  # IP-Adapter-Plus files fix the head width at 64: the decoupled file loads as one
    resolution=64,
    lr=1e-3,
    drop_text=0.05,
    same_image_reference=0.3,
    log_every=50,
    save_every=0,
    progress=False,
    device="cpu",
    caption_template="a {word}",
    class_word="creature",  # each subject's own word is in its folder's word.txt
)
SWEEP_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
IPA_FILE = "adapter_decoupled_ip-adapter-plus-layout.safetensors"


def run_pipeline(settings: dict, weights: Path, results: Path, seed: int, log: Callable[[str], None]) -> dict:
    results.mkdir(parents=True, exist_ok=True)
    train_ids, held_out = split_identities(seed)
    log(f"world: {len(train_ids)} training identities, {len(held_out)} held out")

    taesd = train_vae(train_ids, settings["vae_steps"], seed=seed, log=log)
    save_weights(weights, "vae.safetensors", vae_state(taesd))
    vae = build_vae(load_file(weights / "vae.safetensors"))
    latents, scenes = latent_pool(vae.first_stage_model, train_ids, settings["pool"], seed=seed + 1)
    model, clip = train_base_model(
        latents, scenes, settings["base_steps"], seed=seed, grounding_weight=settings["grounding_weight"], log=log
    )
    save_weights(weights, "unet.safetensors", model.model.diffusion_model.state_dict())
    save_weights(weights, "text.safetensors", clip.cond_stage_model.clip_l.state_dict())

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
        adapter_paths["ipa-as-nested"] = write_ip_adapter_layout(adapter_paths["decoupled"], Path(scratch) / IPA_FILE)
        kit = load_kit(weights, adapter_paths)
    kit.steps = settings["sample_steps"]
    grounding = diagnose(kit, train_ids, held_out, results, log, count=settings["diagnose"])
    report = evaluate(kit, held_out, settings, seed, log, results)
    report.update(settings=settings, seed=seed, reader_accuracy=instrument, grounding=grounding)
    write_report(report, results)
    return report


def evaluate(kit, held_out, settings: dict, seed: int, log: Callable[[str], None], results: Path) -> dict:
    """Every table of the report, on the held-out identities."""
    identities = held_out[: settings["eval_identities"]]
    main = single_subject_scores(kit, identities, settings["eval_prompts"], seed + 7, log=log)
    sweep = single_subject_scores(
        kit,
        held_out[: settings["sweep_identities"]],
        1,
        seed + 8,
        methods=("nested", "decoupled", "single-token", "ipa-as-nested"),
        weights=SWEEP_WEIGHTS,
        log=log,
    )
    variants = [(m, False) for m in METHODS] + [(m, True) for m in METHODS if m != "none"]
    different = two_subject_scores(
        kit, pairs_of(held_out, settings["pairs"], False, seed + 9), seed + 10, [(m, False) for m in METHODS], log=log
    )
    same = two_subject_scores(kit, pairs_of(held_out, settings["pairs"], True, seed + 11), seed + 12, variants, log=log)
    figures.examples_grid(main["examples"], results / "single_subject.png")
    figures.two_subject_grid(different["examples"], results / "two_classes.png")
    figures.two_subject_grid(same["examples"], results / "same_class.png")
    return {
        "single_subject": {f"{m}@{w}": s for (m, w), s in main["scores"].items()},
        "sweep": {f"{m}@{w}": s for (m, w), s in sweep["scores"].items()},
        "two_classes": different["scores"],
        "same_class": same["scores"],
    }


def write_report(report: dict, results: Path) -> None:
    """results.md and the trade-off curve, from the numbers alone (``python -m toy_world report``)."""
    figures.sweep_curve(report["sweep"], report["single_subject"]["none@0.0"], results / "tradeoff.png")
    (results / "results.md").write_text(figures.markdown(report))


def export_training_data(
    folder: Path, identities, photos: int, seed: int, draw: Callable[[Scene], np.ndarray] = render
) -> Path:
    """One folder per training identity: scenes of it (drawn by ``draw``) with their captions, and
    its word (the trainer's layout; word.txt binds each subject to its own class word)."""
    rng = random.Random(seed + 3)
    for identity in identities:
        subject = folder / f"id_{identity.cls}_{identity.shape}_{identity.pattern}_{identity.palette}"
        subject.mkdir(parents=True)
        (subject / "word.txt").write_text(identity.word)
        for number in range(photos):
            scene = random_scene(rng, identities, identity=identity)
            Image.fromarray((draw(scene) * 255).astype(np.uint8)).save(subject / f"{number}.png")
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
    target: "Path | None" = None,
    **overrides,
) -> Path:
    """Train one adapter with ADAPTER_SETTINGS (``overrides`` replace some: toy_world/explain.py's
    recipe tests) and write it, in float16, to ``target`` (default: weights/adapter_<method>)."""
    config = TrainConfig(
        **{**ADAPTER_SETTINGS, **overrides},
        data=str(data),
        output=str(output),
        steps=settings["adapter_steps"],
        batch_size=settings["adapter_batch"],
        seed=seed,
    )
    log(f"training the {method} adapter ({config.steps} steps of {config.batch_size})")
    trainer = Trainer(config, ToyParts(weights), patch_class=patch_class)
    trainer.train()
    target = target or weights / f"adapter_{method}.safetensors"
    save_native(target, trainer.adapter.config, trainer.adapter.state_dict(), dtype=torch.float16)
    return target


def write_ip_adapter_layout(native: Path, target: Path) -> Path:
    """The adapter's tensors under IP-Adapter-Plus names (image_proj.*, ip_adapter.{2i+1}.to_k_ip/to_v_ip),
    as a user's IP-Adapter-Plus file would hold them; Load Nested Adapter reads it by its content."""
    state = to_ip_adapter_layout(load_file(native))
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, target)
    return target
