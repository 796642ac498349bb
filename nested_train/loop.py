"""The training loop: data, forward, optimisation, checkpoints, logs and preview samples.

Several GPUs (or CPU processes) are driven by ``torchrun``: each process takes every
world_size-th example of a step and DistributedDataParallel averages the gradients, so a run
gives the same parameters whatever the number of processes (up to float summation order).
ComfyUI must be prepared (``comfy_runtime.prepare_comfyui``) before this module is imported.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import torch
from torch import Tensor

from ..nested_core.attention import TokenPositions
from ..nested_core.checkpoint import load_adapter_checkpoint, save_native
from ..nested_core.files import write_atomically
from ..nodes.contract import STEP_KEY
from ..nodes.encode import clip_features
from ..nodes.tokens import resolve_token, tokenize_prompt
from .config import TrainConfig
from .dataset import Example, SubjectDataset
from .frozen import CheckpointFiles, FrozenPartsLoader
from .models import TrainableAdapter, create_adapter, gradient_checkpointing
from .objective import TrainingStep, diffusion_loss, encode_caption, noise_and_sigma, patches

log = logging.getLogger("nested_train")
CONTEXT_TOKENS = 77  # one CLIP chunk: start, 75 tokens, end
CHECKPOINTS = "checkpoints"


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        frozen: Optional[FrozenPartsLoader] = None,
        resume: bool = False,
        patch_class: Optional[type] = None,
    ):
        """``frozen`` gives the base model's parts (the checkpoint files of the settings by default);
        ``patch_class`` replaces the nodes' NestedAttn2Patch (the toy world's baselines use it).
        Settings and every data file are checked before any model is loaded."""
        self.config = config
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        config.validate(self.world)
        frozen = frozen or CheckpointFiles()
        problems = frozen.problems(config)
        if problems:
            raise ValueError("invalid training settings:\n  - " + "\n  - ".join(problems))

        def caption_problem(caption: str, word: str) -> Optional[str]:
            ids = tokenize_prompt(caption).ids
            if len(ids) > CONTEXT_TOKENS:  # every caption of a batch must give a context of one length
                return f"is longer than {CONTEXT_TOKENS - 2} tokens (the trainer encodes one 77-token chunk)"
            if not _token_problem(word) and resolve_token(word) not in ids:  # (a bad word is reported on its own)
                return f"does not contain the class word '{word}'"
            return None

        self.dataset = SubjectDataset.scan(
            config, _token_problem, caption_problem, min_size=max(16, config.resolution // 4)
        )
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if config.uses_cuda() else "gloo")
        self.device = mm.get_torch_device()
        self.output = Path(config.output)
        self.parts = frozen.load(config)
        words = tuple(sorted({s.word for s in self.dataset.subjects}))
        self.adapter = create_adapter(config, self.parts, words).to(self.device)
        self.module = TrainableAdapter(self.adapter)
        self.trained = torch.nn.parallel.DistributedDataParallel(self.module) if self.world > 1 else self.module
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(config.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.layers = {key: index for index, key in enumerate(self.adapter.config.layer_keys)}
        self.patches = patches(self.parts.sites, patch_class)
        self._latent_cache: dict[Path, Tensor] = {}
        self._text_cache: dict[tuple[str, str], tuple[Tensor, Tensor, list[int]]] = {}
        self.step = 0
        if resume:
            self._resume()
        mm.load_models_gpu([self.parts.model], force_full_load=True)

    # --------------------------------------------------------------------- the loop
    def train(self) -> Path:
        from tqdm import tqdm

        config = self.config
        local = config.batch_size // self.world
        micro = local // config.accumulate
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=not (config.progress and self.rank == 0),
            unit="step",
            dynamic_ncols=True,
        )
        started, done = time.perf_counter(), 0
        unet = self.parts.model.model.diffusion_model
        with gradient_checkpointing(unet, config.gradient_checkpointing):
            while self.step < config.steps:
                mine = list(range(self.rank, config.batch_size, self.world))
                total = 0.0
                for part in range(config.accumulate):
                    indices = mine[part * micro : (part + 1) * micro]
                    sync = part == config.accumulate - 1 or self.world == 1
                    with nullcontext() if sync else self.trained.no_sync():
                        loss = self.loss(indices) * (len(indices) / local)
                        loss.backward()
                    total += float(loss.detach())
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                done += 1
                rate = done / (time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}", steps_s=f"{rate:.2f}")
                if self.rank == 0:
                    self._after_step(total, rate)
        bar.close()
        if self.rank == 0 and not self._checkpoint_exists(self.step):
            self.save()
        if self.world > 1:
            torch.distributed.barrier()
        return self.output / "adapter.safetensors"

    def loss(self, indices: list[int]) -> Tensor:
        """Mean diffusion loss over the given examples of the current step (plus the regulariser)."""
        config, parts = self.config, self.parts
        examples = [self.dataset.example(self.step, i) for i in indices]
        features = self._features(examples)
        tokens, pairs = self.trained(features)
        context, pooled, positions = self._captions(examples)
        positions = [found if e.bind else [] for found, e in zip(positions, examples)]
        step = TrainingStep(
            kv={key: pairs[i] for key, i in self.layers.items()},
            positions=TokenPositions.from_lists(positions, self.device),
            track_values=config.value_norm_weight > 0,
        )
        x0 = parts.model.model.process_latent_in(self._latents(examples).to(self.device))
        sampling = parts.model.get_model_object("model_sampling")
        noise, sigma = noise_and_sigma(
            sampling, x0.shape[1:], [f"{config.seed}:{self.step}:{i}:noise" for i in indices], self.device
        )
        noisy = sampling.noise_scaling(sigma, noise, x0)
        options = {"patches_replace": {"attn2": self.patches}, STEP_KEY: step}
        extra = self._extra_conds(pooled)
        with self._autocast():
            x0_pred = parts.model.model.apply_model(
                noisy, sigma, c_crossattn=context.to(self.device), transformer_options=options, **extra
            )
        loss = diffusion_loss(sampling, x0_pred, x0, sigma).mean()
        if step.value_norms:
            loss = loss + config.value_norm_weight * torch.stack(step.value_norms).mean()
        # Keeps every parameter in the graph when no example binds the subject (DDP needs it).
        return loss + 0.0 * sum(t.sum() for pair in pairs for t in pair) + 0.0 * tokens.sum()

    def _latents(self, examples: list[Example]) -> Tensor:
        """VAE latents of the targets (frozen VAE; cached per image when cache_latents is on)."""
        with torch.no_grad():
            if not self.config.cache_latents:
                return self.parts.vae.encode(torch.stack([e.target for e in examples])).clone().float().cpu()
            # One image at a time: a kernel's rounding can depend on the batch size, and a cached
            # latent must not depend on which step first needed it (exact resume).
            for example in examples:
                if example.target_path not in self._latent_cache:
                    latent = self.parts.vae.encode(example.target[None]).clone().float().cpu()
                    self._latent_cache[example.target_path] = latent[0]
        return torch.stack([self._latent_cache[e.target_path] for e in examples])

    def _captions(self, examples: list[Example]) -> tuple[Tensor, Tensor, list[list[int]]]:
        """Frozen text encodings and the subject word's positions, computed once per caption and word."""
        keys = [(e.caption, e.word) for e in examples]
        for caption, word in set(keys) - set(self._text_cache):
            self._text_cache[caption, word] = encode_caption(self.parts.clip, caption, resolve_token(word))
        entries = [self._text_cache[key] for key in keys]
        return torch.cat([e[0] for e in entries]), torch.cat([e[1] for e in entries]), [list(e[2]) for e in entries]

    def _features(self, examples: list[Example]) -> Tensor:
        """CLIP penultimate features of each reference (frozen; one call per reference size)."""
        with torch.no_grad():
            out = [clip_features(self.parts.clip_vision, e.reference[None]) for e in examples]
        return torch.cat(out).clone().float().to(self.device)

    def _extra_conds(self, pooled: Tensor) -> dict:
        model = self.parts.model.model
        if not model.model_config.unet_config.get("adm_in_channels"):
            return {}
        size = self.config.resolution
        adm = model.encode_adm(
            pooled_output=pooled.clone(),
            width=size,
            height=size,
            crop_w=0,
            crop_h=0,
            target_width=size,
            target_height=size,
        )
        return {"y": adm.to(self.device)}

    def _autocast(self):
        if self.config.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --------------------------------------------------------------------- bookkeeping
    def _after_step(self, loss: float, rate: float) -> None:
        config = self.config
        if self.step % config.log_every == 0 or self.step == config.steps:
            self._log(loss, rate)
        if config.save_every and self.step % config.save_every == 0:
            self.save()
        if config.sample_every and self.step % config.sample_every == 0:
            from .samples import render_samples

            render_samples(self, self.output / "samples")

    def _log(self, loss: float, rate: float) -> None:
        path = self.output / "train_log.csv"
        self.output.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "loss", "lr", "steps_per_s", "examples_per_s"])
            writer.writerow(
                [
                    self.step,
                    f"{loss:.6f}",
                    f"{self.scheduler.get_last_lr()[0]:.3g}",
                    f"{rate:.3f}",
                    f"{rate * self.config.batch_size:.3f}",
                ]
            )

    def save(self) -> Path:
        """Checkpoint folder written aside and renamed, so a crash never leaves half a checkpoint."""
        folder = self.output / CHECKPOINTS / f"step_{self.step:07d}"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_native(partial / "adapter.safetensors", self.adapter.config, self.adapter.state_dict())
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "config": dataclasses.asdict(self.config),
            },
            partial / "state.pt",
        )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
        write_atomically(
            self.output / "adapter.safetensors", lambda part: shutil.copyfile(folder / "adapter.safetensors", part)
        )
        log.info("saved %s", folder)
        return folder

    def _checkpoint_exists(self, step: int) -> bool:
        return (self.output / CHECKPOINTS / f"step_{step:07d}" / "state.pt").exists()

    def _resume(self) -> None:
        folders = sorted(p for p in (self.output / CHECKPOINTS).glob("step_*") if p.is_dir() and "." not in p.name)
        if not folders:
            log.info("no checkpoint in %s: starting from step 0", self.output / CHECKPOINTS)
            return
        folder = folders[-1]
        state = torch.load(folder / "state.pt", map_location=self.device, weights_only=True)
        changed = self.config.changes_against(state.get("config", {}))
        if changed:
            raise ValueError(
                f"--resume from {folder}: these settings differ from the checkpoint's, so the run would not "
                "continue the same training:\n  - "
                + "\n  - ".join(changed)
                + "\nRestore them, or train into a new output folder."
            )
        checkpoint = load_adapter_checkpoint(folder / "adapter.safetensors")
        self.adapter.load_state_dict({k: v.to(self.device) for k, v in checkpoint.state_dict.items()}, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        log.info("resumed from %s (step %d)", folder, self.step)


def _token_problem(word: str) -> Optional[str]:
    try:
        resolve_token(word)
    except ValueError as error:
        return str(error)
    return None
