"""A procedural world of four kinds of objects, coarse enough to train every model on a CPU.

Images are 64 x 64 RGB made of 8 x 8 cells of 8 pixels: one cell is one latent of the VAE, so the
autoencoder's job is easy and the diffusion model draws "pixel art" at latent resolution.

An object is one of four classes (creature, robot, flower, house), each with its own family of four
shapes (which of a 4 x 4 block of cells it fills); its identity within the class is a shape, a
pattern (which of its cells take the second colour; five patterns) and a palette of two colours
(eight): 4 x 5 x 8 = 160 identities per class, 640 in all. The class word is what decides which
family is drawn, so it carries information, as a class noun does in a real text-to-image model.

A scene puts one object at one of five places, or two objects side by side, on a plain background
of one of six colours. Captions name the place before the object, so a causal text encoder gives
the class word's token both what and where: "blue background, at the top left a robot", "blue
background, on the left a robot and on the right a flower"; half of the base model's captions
also describe the objects ("... a teal striped horned robot").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SIZE, CELL, GRID, BLOCK = 64, 8, 8, 4
CLASSES = ("creature", "robot", "flower", "house")
_SHAPES = {  # every shape fills the inner 2 x 2 cells, so every pattern shows on every shape
    "creature": {
        "plus": [".XX.", "XXXX", "XXXX", ".XX."],
        "crab": ["X..X", "XXXX", "XXXX", "X..X"],
        "bug": ["X..X", ".XX.", ".XX.", "X..X"],
        "slanted": ["XXX.", "XXXX", "XXXX", ".XXX"],
    },
    "robot": {
        "boxy": ["XXXX", "XXXX", "XXXX", "XXXX"],
        "tee": ["XXXX", "XXXX", ".XX.", ".XX."],
        "legged": ["XXXX", "XXXX", "XXXX", "X..X"],
        "horned": ["X..X", "XXXX", "XXXX", "XXXX"],
    },
    "flower": {
        "tall": [".XX.", ".XX.", ".XX.", ".XX."],
        "cup": ["X..X", "XXXX", ".XX.", ".XX."],
        "star": ["..X.", "XXXX", "XXXX", ".X.."],
        "round": [".XX.", "XXXX", "XXXX", "XXX."],
    },
    "house": {
        "hut": [".XX.", "XXXX", "XXXX", "XXXX"],
        "tower": [".XX.", ".XX.", "XXXX", "XXXX"],
        "flat": ["....", "XXXX", "XXXX", "XXXX"],
        "wide": ["XXXX", "XXXX", "XXXX", "XX.X"],
    },
}
SHAPES = {word: tuple(shapes) for word, shapes in _SHAPES.items()}  # shape names per class
SHAPES_PER_CLASS = 4
_PATTERNS = {
    "plain": ["....", "....", "....", "...."],
    "striped": ["....", "####", "....", "####"],
    "barred": [".#.#", ".#.#", ".#.#", ".#.#"],
    "checkered": ["#.#.", ".#.#", "#.#.", ".#.#"],
    "spotted": ["....", ".##.", ".##.", "...."],
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
PALETTE_WORDS = ("orange", "teal", "magenta", "navy", "brown", "lime", "white", "black")
BACKGROUNDS = {
    "red": (235, 170, 170),
    "green": (170, 225, 170),
    "blue": (170, 190, 240),
    "yellow": (240, 230, 150),
    "purple": (210, 175, 235),
    "gray": (200, 200, 200),
}
POSITIONS = {"top left": (0, 0), "top right": (0, 4), "bottom left": (4, 0), "bottom right": (4, 4), "center": (2, 2)}
PAIR_PLACES = ((2, 0), (2, 4))  # left and right object (row, column of the top-left cell)


@dataclass(frozen=True)
class Identity:
    """One object: its class and, within the class, its shape, pattern and palette."""

    cls: int
    shape: int
    pattern: int
    palette: int

    @property
    def word(self) -> str:
        return CLASSES[self.cls]

    @property
    def shape_name(self) -> str:
        return SHAPES[self.word][self.shape]

    def describe(self) -> str:
        return f"{self.word} {self.shape_name}/{PATTERNS[self.pattern]}/{PALETTE_WORDS[self.palette]}"


ALL_IDENTITIES = tuple(
    Identity(c, s, p, q)
    for c in range(len(CLASSES))
    for s in range(SHAPES_PER_CLASS)
    for p in range(len(PATTERNS))
    for q in range(len(PALETTES))
)


def split_identities(seed: int = 0, held_out_per_class: int = 10) -> tuple[tuple[Identity, ...], tuple[Identity, ...]]:
    """(training identities, held-out identities): held-out ones are new combinations of known
    parts, the same number in every class, interleaved by class (the first four are of four classes)."""
    rng = random.Random(seed)
    train, held = [], []
    for c in range(len(CLASSES)):
        ids = [i for i in ALL_IDENTITIES if i.cls == c]
        rng.shuffle(ids)
        held.append(ids[:held_out_per_class])
        train += ids[held_out_per_class:]
    interleaved = [group[n] for n in range(held_out_per_class) for group in held]
    return tuple(train), tuple(interleaved)


@dataclass(frozen=True)
class Scene:
    identities: tuple[Identity, ...]  # one, or two (left, right)
    background: str
    position: str = "center"  # one-object scenes
    describe: bool = False  # the caption names each object's colour, pattern and shape

    @property
    def caption(self) -> str:
        objects = [self._object(i) for i in self.identities]
        if len(objects) == 2:
            return f"{self.background} background, on the left {objects[0]} and on the right {objects[1]}"
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"{self.background} background, {where} {objects[0]}"

    def _object(self, identity: Identity) -> str:
        if not self.describe:
            return f"a {identity.word}"
        return f"a {PALETTE_WORDS[identity.palette]} {PATTERNS[identity.pattern]} {identity.shape_name} {identity.word}"

    @property
    def places(self) -> tuple[tuple[int, int], ...]:
        return PAIR_PLACES if len(self.identities) == 2 else (POSITIONS[self.position],)


def random_scene(
    rng: random.Random,
    identities: Sequence[Identity],
    pair_probability: float = 0.3,
    identity: Optional[Identity] = None,
    describe_probability: float = 0.0,
) -> Scene:
    """A random scene (of ``identity`` alone when given). Captions that describe the objects teach
    the base model to draw appearance from words; evaluation prompts never describe them."""
    background = rng.choice(list(BACKGROUNDS))
    describe = rng.random() < describe_probability
    if identity is None and rng.random() < pair_probability:
        first, second = rng.sample(list(identities), 2)
        return Scene((first, second), background, describe=describe)
    return Scene((identity or rng.choice(identities),), background, rng.choice(list(POSITIONS)), describe)


def shape_cells(identity: Identity) -> np.ndarray:
    """The cells of its 4 x 4 block the identity's shape fills: [4, 4] bool."""
    return np.array([[c == "X" for c in row] for row in _SHAPES[identity.word][identity.shape_name]])


def pattern_cells(name: str) -> np.ndarray:
    """The cells of a 4 x 4 block a pattern gives the second colour: [4, 4] bool."""
    return np.array([[c == "#" for c in row] for row in _PATTERNS[name]])


def object_mask(scene: Scene, which: int = 0) -> np.ndarray:
    """The cells object ``which`` of the scene fills: [8, 8] bool."""
    inside = np.zeros((GRID, GRID), dtype=bool)
    identity = scene.identities[which]
    row, column = scene.places[which]
    shape = _SHAPES[identity.word][identity.shape_name]
    for r in range(BLOCK):
        for c in range(BLOCK):
            inside[row + r, column + c] = shape[r][c] == "X"
    return inside


def cells(scene: Scene) -> np.ndarray:
    """The scene's 8 x 8 cell colours, float32 in 0..1: [8, 8, 3]."""
    grid = np.empty((GRID, GRID, 3), dtype=np.float32)
    grid[:] = np.array(BACKGROUNDS[scene.background], dtype=np.float32) / 255
    for which, identity in enumerate(scene.identities):
        body, detail = (np.array(c, dtype=np.float32) / 255 for c in PALETTES[identity.palette])
        pattern = _PATTERNS[PATTERNS[identity.pattern]]
        row, column = scene.places[which]
        inside = object_mask(scene, which)
        for r in range(BLOCK):
            for c in range(BLOCK):
                if inside[row + r, column + c]:
                    grid[row + r, column + c] = detail if pattern[r][c] == "#" else body
    return grid


def render(scene: Scene) -> np.ndarray:
    """The scene as an image [64, 64, 3] in 0..1 (each cell an 8 x 8 block)."""
    return np.repeat(np.repeat(cells(scene), CELL, axis=0), CELL, axis=1)


def subject_photo(identity: Identity, rng: random.Random) -> np.ndarray:
    """A reference photo: the object alone in the centre of a random background."""
    return render(Scene((identity,), rng.choice(list(BACKGROUNDS)), "center"))
