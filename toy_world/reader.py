"""The world reader: a small CNN, trained on the world's ground truth, that reads back from
pixels what is in an image. It is the measuring instrument of the evaluation, not a method.

One-object scenes: shape (one of the 16 shapes of all classes, so it also tells the class),
pattern, palette, background, position. Two-object scenes: shape, pattern and palette of the left
and of the right object, and the background.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .world import (
    ALL_IDENTITIES,
    BACKGROUNDS,
    CLASSES,
    PALETTES,
    PATTERNS,
    POSITIONS,
    SHAPES_PER_CLASS,
    Identity,
    Scene,
    random_scene,
    render,
)

SHAPE_COUNT = len(CLASSES) * SHAPES_PER_CLASS
HEADS = {
    "shape": SHAPE_COUNT,
    "pattern": len(PATTERNS),
    "palette": len(PALETTES),
    "background": len(BACKGROUNDS),
    "position": len(POSITIONS),
    "left_shape": SHAPE_COUNT,
    "left_pattern": len(PATTERNS),
    "left_palette": len(PALETTES),
    "right_shape": SHAPE_COUNT,
    "right_pattern": len(PATTERNS),
    "right_palette": len(PALETTES),
}


def shape_id(identity: Identity) -> int:
    """The shape among all classes' shapes (the reader's shape label): class * 4 + shape."""
    return identity.cls * SHAPES_PER_CLASS + identity.shape


SINGLE = ("shape", "pattern", "palette", "background", "position")
PAIR = ("left_shape", "left_pattern", "left_palette", "right_shape", "right_pattern", "right_palette", "background")


class WorldReader(nn.Module):
    """Reads the 8 x 8 cell colours (the world's resolution) with a small convolutional network."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.AvgPool2d(8),
            nn.Conv2d(3, 64, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 128),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, count) for name, count in HEADS.items()})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 64, 64, 3] in 0..1 -> logits per attribute."""
        features = self.trunk(images.permute(0, 3, 1, 2) * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}


def labels(scene: Scene) -> dict[str, int]:
    out = {"background": list(BACKGROUNDS).index(scene.background)}
    if len(scene.identities) == 2:
        for side, identity in zip(("left", "right"), scene.identities):
            out.update(
                {
                    f"{side}_shape": shape_id(identity),
                    f"{side}_pattern": identity.pattern,
                    f"{side}_palette": identity.palette,
                }
            )
    else:
        identity = scene.identities[0]
        out.update(
            shape=shape_id(identity),
            pattern=identity.pattern,
            palette=identity.palette,
            position=list(POSITIONS).index(scene.position),
        )
    return out


def train_reader(steps: int = 800, batch: int = 128, seed: int = 0, log=print) -> WorldReader:
    """Trained on freshly drawn scenes of every identity (it knows the whole world)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    reader = WorldReader()
    optimizer = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    for step in range(steps):
        scenes = [random_scene(rng, ALL_IDENTITIES, pair_probability=0.3) for _ in range(batch)]
        images = torch.from_numpy(np.stack([_augment(render(s), rng) for s in scenes]))
        logits = reader(images)
        loss = 0.0
        for name in HEADS:
            targets = torch.tensor([labels(s).get(name, -1) for s in scenes])
            present = targets >= 0
            if present.any():
                loss = loss + loss_fn(logits[name][present], targets[present]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"reader step {step}: loss {loss.item():.4f}")
    return reader.eval()


def _augment(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """Colour noise per cell and a global colour shift, so imperfect generated images still read."""
    noise = np.random.default_rng(rng.randrange(2**31))
    cells = noise.normal(0, rng.uniform(0, 0.08), (8, 8, 3)) + noise.normal(0, 0.04, (1, 1, 3))
    noisy = image + np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)
    return np.clip(noisy, 0, 1).astype(np.float32)


@torch.no_grad()
def read(reader: WorldReader, images: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Predicted class per attribute for images [B, 64, 64, 3]."""
    logits = reader(images.float())
    return {name: logits[name].argmax(-1) for name in names}


@torch.no_grad()
def accuracy(reader: WorldReader, count: int = 512, seed: int = 99) -> dict[str, float]:
    """Accuracy on fresh clean scenes: how far the instrument can be trusted."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, ALL_IDENTITIES, pair_probability=0.3) for _ in range(count)]
    logits = reader(torch.from_numpy(np.stack([render(s) for s in scenes])))
    result = {}
    for name in HEADS:
        targets = torch.tensor([labels(s).get(name, -1) for s in scenes])
        present = targets >= 0
        result[name] = float((logits[name][present].argmax(-1) == targets[present]).float().mean())
    return result


def load_reader(weights: Path) -> WorldReader:
    reader = WorldReader()
    reader.load_state_dict({k: v.float() for k, v in load_file(weights / "reader.safetensors").items()})
    return reader.eval()
