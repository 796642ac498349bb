"""A procedural world of creatures, coarse enough to train every model on a CPU.

Images are 64 x 64 RGB made of 8 x 8 cells of 8 pixels: one cell is one latent of the VAE, so the
autoencoder's job is easy and the diffusion model draws "pixel art" at latent resolution.

A creature is 4 x 4 cells. Its identity is a shape (which cells it fills), a pattern (which of its
cells take the second colour) and a palette of two colours: 6 x 5 x 8 = 240 identities. A scene
puts one creature at one of five places (top left, top right, bottom left, bottom right, centre),
or two creatures side by side (left, right), on a plain background of one of six colours; its
caption says so, "a creature at the top left, blue background", and sometimes also describes the
creature: "a teal checkered plus creature at the top left, blue background".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

SIZE, CELL, GRID = 64, 8, 8
WORD = "creature"
_SHAPES = {  # every shape fills the inner 2 x 2 cells, so every pattern shows on every shape
    "square": ["XXXX", "XXXX", "XXXX", "XXXX"],
    "plus": [".XX.", "XXXX", "XXXX", ".XX."],
    "slant": ["XXX.", "XXXX", "XXXX", ".XXX"],
    "tee": ["XXXX", "XXXX", ".XX.", ".XX."],
    "aitch": ["X..X", "XXXX", "XXXX", "X..X"],
    "ex": ["X..X", ".XX.", ".XX.", "X..X"],
}
SHAPES = tuple(_SHAPES)
_PATTERNS = {
    "plain": ["....", "....", "....", "...."],
    "hstripes": ["....", "####", "....", "####"],
    "vstripes": [".#.#", ".#.#", ".#.#", ".#.#"],
    "checker": ["#.#.", ".#.#", "#.#.", ".#.#"],
    "core": ["....", ".##.", ".##.", "...."],
}
PATTERNS = tuple(_PATTERNS)
PALETTES = (  # (body, pattern) colours, saturated so they stand out from the pale backgrounds
    ((230, 120, 20), (30, 20, 10)),
    ((20, 150, 140), (240, 240, 240)),
    ((200, 30, 150), (250, 220, 30)),
    ((30, 40, 130), (250, 140, 40)),
    ((120, 70, 30), (60, 220, 230)),
    ((110, 190, 30), (90, 20, 120)),
    ((245, 245, 245), (200, 20, 30)),
    ((25, 25, 25), (140, 240, 60)),
)
BACKGROUNDS = {
    "red": (235, 170, 170),
    "green": (170, 225, 170),
    "blue": (170, 190, 240),
    "yellow": (240, 230, 150),
    "purple": (210, 175, 235),
    "gray": (200, 200, 200),
}
POSITIONS = {"top left": (0, 0), "top right": (0, 4), "bottom left": (4, 0), "bottom right": (4, 4), "center": (2, 2)}
PAIR_PLACES = ((2, 0), (2, 4))  # left and right creature (row, column of the top-left cell)


@dataclass(frozen=True)
class Identity:
    shape: int
    pattern: int
    palette: int

    @property
    def index(self) -> int:
        return (self.shape * len(PATTERNS) + self.pattern) * len(PALETTES) + self.palette

    @classmethod
    def from_index(cls, index: int) -> "Identity":
        rest, palette = divmod(index, len(PALETTES))
        shape, pattern = divmod(rest, len(PATTERNS))
        return cls(shape, pattern, palette)

    def describe(self) -> str:
        return f"{SHAPES[self.shape]}/{PATTERNS[self.pattern]}/palette {self.palette}"


ALL_IDENTITIES = tuple(Identity.from_index(i) for i in range(len(SHAPES) * len(PATTERNS) * len(PALETTES)))


def split_identities(seed: int = 0, held_out: int = 40) -> tuple[tuple[Identity, ...], tuple[Identity, ...]]:
    """(training identities, held-out identities): held-out ones are new combinations of known parts."""
    rng = random.Random(seed)
    order = list(ALL_IDENTITIES)
    rng.shuffle(order)
    return tuple(order[held_out:]), tuple(order[:held_out])


PALETTE_WORDS = ("orange", "teal", "magenta", "navy", "brown", "lime", "white", "black")
PATTERN_WORDS = ("plain", "striped", "barred", "checkered", "spotted")


@dataclass(frozen=True)
class Scene:
    identities: tuple[Identity, ...]  # one, or two (left, right)
    background: str
    position: str = "center"  # one-creature scenes
    describe: bool = False  # the caption names each creature's colour, pattern and shape

    @property
    def caption(self) -> str:
        first, *rest = [self._creature(i) for i in self.identities]
        if rest:
            return f"{first} on the left and {rest[0]} on the right, {self.background} background"
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"{first} {where}, {self.background} background"

    def _creature(self, identity: Identity) -> str:
        if not self.describe:
            return f"a {WORD}"
        return f"a {PALETTE_WORDS[identity.palette]} {PATTERN_WORDS[identity.pattern]} {SHAPES[identity.shape]} {WORD}"


def random_scene(
    rng: random.Random,
    identities: tuple[Identity, ...],
    pair_probability: float = 0.2,
    identity: Optional[Identity] = None,
    describe_probability: float = 0.0,
) -> Scene:
    """A random scene. Captions that describe the creatures teach the UNet to draw appearance from
    text, so cross-attention (where nested attention acts) can steer it; evaluation prompts never
    describe the creature."""
    background = rng.choice(list(BACKGROUNDS))
    describe = rng.random() < describe_probability
    if identity is None and rng.random() < pair_probability:
        first, second = rng.sample(identities, 2)
        return Scene((first, second), background, describe=describe)
    return Scene((identity or rng.choice(identities),), background, rng.choice(list(POSITIONS)), describe)


def cells(scene: Scene) -> np.ndarray:
    """The scene's 8 x 8 cell colours, float32 in 0..1: [8, 8, 3]."""
    grid = np.empty((GRID, GRID, 3), dtype=np.float32)
    grid[:] = np.array(BACKGROUNDS[scene.background], dtype=np.float32) / 255
    places = PAIR_PLACES if len(scene.identities) == 2 else (POSITIONS[scene.position],)
    for identity, (row, column) in zip(scene.identities, places):
        body, detail = (np.array(c, dtype=np.float32) / 255 for c in PALETTES[identity.palette])
        shape, pattern = _SHAPES[SHAPES[identity.shape]], _PATTERNS[PATTERNS[identity.pattern]]
        for r in range(4):
            for c in range(4):
                if shape[r][c] == "X":
                    grid[row + r, column + c] = detail if pattern[r][c] == "#" else body
    return grid


def render(scene: Scene) -> np.ndarray:
    """The scene as an image [64, 64, 3] in 0..1 (each cell an 8 x 8 block)."""
    return np.repeat(np.repeat(cells(scene), CELL, axis=0), CELL, axis=1)


def subject_photo(identity: Identity, rng: random.Random) -> np.ndarray:
    """A reference photo: the creature alone in the centre of a random background."""
    return render(Scene((identity,), rng.choice(list(BACKGROUNDS)), "center"))
