"""Small generated training sets: one folder of drawn images per subject."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = [(220, 60, 60), (60, 160, 80), (60, 90, 200), (230, 190, 40), (150, 70, 180)]


def make_dataset(
    root: Path, subjects: int = 3, photos: int = 3, size: int = 64, captions: bool = True, masks: bool = True
) -> Path:
    """Each subject: a shape of its own colour and kind, drawn at varying places and sizes."""
    rng = random.Random(0)
    for s in range(subjects):
        folder = root / f"subject_{s}"
        folder.mkdir(parents=True, exist_ok=True)
        for p in range(photos):
            image = Image.new("RGB", (size, size), tuple(rng.randrange(150, 256) for _ in range(3)))
            mask = Image.new("L", (size, size), 0)
            r = rng.randrange(size // 6, size // 3)
            cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            for canvas, fill in ((ImageDraw.Draw(image), PALETTE[s % len(PALETTE)]), (ImageDraw.Draw(mask), 255)):
                (canvas.ellipse if s % 2 == 0 else canvas.rectangle)(box, fill=fill)
            image.save(folder / f"{p}.png")
            if masks:
                mask.save(folder / f"{p}.mask.png")
            if captions and p == 0:
                (folder / f"{p}.txt").write_text("a photo of a dog in a garden")
    return root
