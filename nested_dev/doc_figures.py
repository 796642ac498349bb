"""The README's demo figures, from what ``./dev demo`` wrote (toy-world mode).

    ./dev demo && .venv/bin/python -m nested_dev.doc_figures

docs/toy_demo.png: the held-out photos and the one- and two-subject images;
docs/maps_example.png: the three outputs of Nested Attention Maps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .comfy_env import PACK_ROOT

DEMO = PACK_ROOT / "demo_output"
DOCS = PACK_ROOT / "docs"
HEIGHT = 160
FONT = ImageFont.load_default(size=14)


def _strip(items: list[tuple[list[str], Path]], path: Path) -> None:
    """Images side by side at one height (nearest-neighbour), each under its caption lines."""
    columns = []
    for lines, source in items:
        image = Image.open(source).convert("RGB")
        image = image.resize((HEIGHT * image.width // image.height, HEIGHT), Image.NEAREST)
        columns.append((lines, image, max(image.width, *(int(FONT.getlength(line)) for line in lines))))
    gap = 16
    canvas = Image.new("RGB", (sum(c[2] for c in columns) + gap * (len(columns) + 1), HEIGHT + 60), "white")
    draw, x = ImageDraw.Draw(canvas), gap
    for lines, image, width in columns:
        for number, line in enumerate(lines):
            draw.text((x, 6 + 17 * number), line, fill=(0, 0, 0), font=FONT)
        canvas.paste(image, (x, 48))
        x += width + gap
    canvas.save(path)


def main() -> int:
    previews = {Image.open(p).size: p for p in (DEMO / "previews").glob("ComfyUI_temp_*.png")}
    needed = [DEMO / "toy_one_subject_00001_.png", DEMO / "toy_two_subjects_00001_.png"]
    if any(not p.is_file() for p in needed) or not {(64, 64), (256, 256), (516, 256)} <= set(previews):
        print("run ./dev demo (toy-world mode) first, with an empty demo_output", file=sys.stderr)
        return 1
    photos = DEMO / "comfy_base" / "input"
    _strip(
        [
            (["photo A", "(held-out creature)"], photos / "subject_a.png"),
            (["A: 'blue background, at", "the top left a creature'"], needed[0]),
            (["photo B", "(held-out robot)"], photos / "subject_b.png"),
            (["A and B, no masks: 'yellow background, on the", "left a creature and on the right a robot'"], needed[1]),
        ],
        DOCS / "toy_demo.png",
    )
    _strip(
        [
            (["subject map over the", "image (point marked)"], previews[(64, 64)]),
            (["source map of the point", "over photo A"], previews[(256, 256)]),
            (["value map: per-position v*_q (PCA)", "| the plain word's single V"], previews[(516, 256)]),
        ],
        DOCS / "maps_example.png",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
