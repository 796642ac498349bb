"""Training settings: a TOML or JSON file, then command-line flags on top."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import tomllib


@dataclass
class TrainConfig:
    # what to train on
    data: str = ""  # a folder with one sub-folder per subject, or a .jsonl manifest
    class_word: str = "person"  # the prompt word bound to the subject (one CLIP token)
    caption_template: str = "a photo of a {word}"  # for images without a caption file
    base: str = ""  # an SD1.5/SDXL checkpoint file
    clip_vision: str = ""  # a CLIP vision file (ViT-H/14 for SDXL)
    output: str = "train_output"
    # the adapter
    init_adapter: Optional[str] = None  # start from an IP-Adapter-Plus or native file; else from scratch
    init_from_unet: bool = False  # from scratch: nested to_k/to_v start as each layer's own to_k/to_v
    num_tokens: int = 16
    qformer_dim: int = 1280
    qformer_depth: int = 4
    qformer_heads: int = 20
    qformer_head_dim: int = 64
    # optimisation
    resolution: int = 1024
    batch_size: int = 4  # examples per optimizer step, over all processes
    accumulate: int = 1  # micro-batches per optimizer step (per process)
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast)
    gradient_checkpointing: bool = False
    cache_latents: bool = True  # encode each target image with the VAE once (targets are not augmented)
    # conditioning dropout and regularisation
    drop_text: float = 0.05  # caption replaced by the bare class word (subject still bound)
    drop_subject: float = 0.0  # subject not bound (no adapter gradient while the UNet is frozen)
    same_image_reference: float = 0.5  # probability that the reference is a crop of the target image
    value_norm_weight: float = 0.0  # regulariser on the per-query values (see README); 0 = off
    # bookkeeping
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 0  # 0: no preview images
    sample_prompts: list[str] = field(default_factory=lambda: ["a photo of a {word} on the beach"])
    sample_steps: int = 20
    progress: bool = True

    def changes_against(self, saved: dict[str, Any]) -> list[str]:
        """Settings that differ from a checkpoint's and would make a resumed run differ from an
        uninterrupted one (the length, logging, previews and devices may change)."""
        return [
            f"{name}: {saved[name]!r} -> {getattr(self, name)!r}"
            for name in sorted(set(saved) - FREE_ON_RESUME)
            if hasattr(self, name) and saved[name] != getattr(self, name)
        ]

    def uses_cuda(self) -> bool:
        import torch

        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    def validate(self, world_size: int = 1) -> None:
        problems = []
        if not self.data:
            problems.append("data is not set (a folder of subject folders, or a .jsonl manifest)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"precision is '{self.precision}'; expected fp32, bf16 or fp16")
        if self.batch_size % (world_size * self.accumulate):
            problems.append(
                f"batch_size {self.batch_size} is not divisible by processes x accumulate "
                f"({world_size} x {self.accumulate})"
            )
        if "{word}" not in self.caption_template:
            problems.append("caption_template must contain {word}")
        for name in ("accumulate", "log_every", "batch_size", "steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device is '{self.device}'; expected auto, cpu or cuda (torchrun picks the GPU)")
        for name in ("drop_text", "drop_subject", "same_image_reference"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if self.init_from_unet and self.init_adapter:
            problems.append("init_from_unet and init_adapter both set: start from the UNet or from a file, not both")
        if problems:
            raise ValueError("invalid training settings:\n  - " + "\n  - ".join(problems))


#: Settings a resumed run may change without changing the trained parameters.
FREE_ON_RESUME = {
    "output",
    "steps",
    "init_adapter",
    "init_from_unet",
    "cache_latents",
    "gradient_checkpointing",
    "device",
    "save_every",
    "log_every",
    "sample_every",
    "sample_prompts",
    "sample_steps",
    "progress",
}


def load_config(argv: Optional[list[str]] = None) -> tuple[TrainConfig, bool]:
    """``--config FILE`` (TOML or JSON) first, then any ``--<setting> value`` flag; and --resume."""
    parser = argparse.ArgumentParser(prog="python -m nested_train", description="Train a nested adapter.")
    parser.add_argument("--config", help="a .toml or .json file of settings")
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        if item.type in ("bool",):
            parser.add_argument(flag, dest=item.name, type=_boolean, default=None)
        elif item.name == "sample_prompts":
            parser.add_argument(flag, dest=item.name, nargs="+", default=None)
        else:
            parser.add_argument(flag, dest=item.name, type=_converter(item), default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output")
    args = parser.parse_args(argv)
    values: dict[str, Any] = _read_file(args.config) if args.config else {}
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
    values.update({k: v for k, v in vars(args).items() if v is not None and k not in ("config", "resume")})
    return TrainConfig(**values), args.resume


def _read_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    return tomllib.loads(text)


def _converter(item):
    kind = item.type
    if kind in ("int",):
        return int
    if kind in ("float",):
        return float
    return str


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
