"""Subjects on disk: validated up front, then turned into training examples deterministically.

Layout: ``<data>/<subject>/<image>.(png|jpg|jpeg|webp)``, optionally with ``<image>.txt`` (its
caption, which must contain the class word) and ``<image>.mask.png`` (white on the subject, same
size as the image), and ``<data>/<subject>/word.txt`` when that subject's class word is not the
run's ``class_word`` (an adapter for dogs and cats binds each subject to its own word). Or a
``.jsonl`` manifest with one ``{"image", "subject", "caption"?, "mask"?, "word"?}`` per line, paths
relative to the manifest.

An example for (seed, step, index) is always the same, whatever the number of processes, so runs
resume exactly and multi-process runs see the same data as single-process ones.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..nested_core.images import center_square, fill_background
from .config import TrainConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MASK_SUFFIX = ".mask.png"


class DatasetError(ValueError):
    """Every problem found in the training data, listed at once."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n  - ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"training data {source}: {len(problems)} problem(s):\n  - {shown}{more}")


@dataclass(frozen=True)
class Photo:
    path: Path
    caption: Optional[str] = None
    mask: Optional[Path] = None


@dataclass(frozen=True)
class Subject:
    name: str
    photos: tuple[Photo, ...]
    word: str  # the prompt word the subject is bound to


@dataclass(frozen=True)
class Example:
    target: Tensor  # [H, W, 3] in 0..1, the image to reconstruct
    target_path: Path  # where it came from (the key of the latent cache)
    reference: Tensor  # [h, w, 3] in 0..1, what the encoder sees (background filled if masked)
    caption: str
    word: str  # the subject's word in the caption
    bind: bool  # False: the subject is dropped for this example


class SubjectDataset:
    def __init__(self, subjects: tuple[Subject, ...], config: TrainConfig):
        self.subjects = subjects
        self.config = config
        self._cache: dict[Path, np.ndarray] = {}

    @classmethod
    def scan(
        cls,
        config: TrainConfig,
        is_one_token: Callable[[str], Optional[str]],
        caption_problem: Callable[[str, str], Optional[str]],
        min_size: int,
    ) -> "SubjectDataset":
        """Read the layout, check every file, and raise DatasetError listing all problems.

        ``is_one_token(word)`` and ``caption_problem(caption, word)`` say what is wrong, or None.
        """
        source = config.data
        root = Path(source)
        problems: list[str] = []
        problem = is_one_token(config.class_word)
        if problem:
            problems.append(f"class word: {problem}")
        if not root.exists():
            raise DatasetError(source, [f"{root} does not exist"] + problems)
        words: dict[str, str] = {}
        entries = _manifest(root, words, problems) if root.is_file() else _folders(root, words, problems)
        subjects = []
        for name, photos in sorted(entries.items()):
            word = words.get(name, config.class_word)
            if name in words and (problem := is_one_token(word)):
                problems.append(f"subject '{name}': its word: {problem}")

            def caption_ok(caption: str, word: str = word) -> Optional[str]:
                return caption_problem(caption, word)

            usable = [p for p in photos if _check_photo(p, min_size, caption_ok, problems)]
            if not usable:
                problems.append(f"subject '{name}' has no usable image")
            else:
                subjects.append(Subject(name, tuple(usable), word))
        if not entries:
            problems.append("no subject found (expected one sub-folder of images per subject)")
        if problems:
            raise DatasetError(source, problems)
        return cls(tuple(subjects), config)

    def example(self, step: int, index: int) -> Example:
        """The index-th example of a step: a target photo, a reference crop, a caption; always the same
        for the same (seed, step, index)."""
        config = self.config
        rng = random.Random(f"{config.seed}:{step}:{index}")
        subject = self.subjects[rng.randrange(len(self.subjects))]
        word = subject.word
        target = subject.photos[rng.randrange(len(subject.photos))]
        source = (
            target
            if len(subject.photos) == 1 or rng.random() < config.same_image_reference
            else rng.choice([p for p in subject.photos if p is not target])
        )
        caption = target.caption or config.caption_template.format(word=word)
        if rng.random() < config.drop_text:
            caption = word
        bind = rng.random() >= config.drop_subject
        return Example(
            target=center_square(torch.from_numpy(self._pixels(target.path))[None], config.resolution, True)[0],
            target_path=target.path,
            reference=self._reference(source, rng),
            caption=caption,
            word=word,
            bind=bind,
        )

    def _pixels(self, path: Path) -> np.ndarray:
        """The photo as float32 in [0, 1]; decoded once and kept as uint8 (3 bytes a pixel)."""
        if path not in self._cache:
            with Image.open(path) as image:
                self._cache[path] = np.asarray(image.convert("RGB"))
        return self._cache[path].astype(np.float32) / 255.0

    def _reference(self, photo: Photo, rng: random.Random) -> Tensor:
        """A random crop (60-100% of the area, aspect 4:5 to 5:4), maybe mirrored, background filled."""
        pixels = self._pixels(photo.path)
        if photo.mask is not None:
            with Image.open(photo.mask) as mask:
                weight = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
            pixels = fill_background(torch.from_numpy(pixels), torch.from_numpy(weight)).numpy()
        height, width = pixels.shape[:2]
        area = rng.uniform(0.6, 1.0) * height * width
        aspect = rng.uniform(0.8, 1.25)
        h = min(height, max(1, round((area / aspect) ** 0.5)))
        w = min(width, max(1, round((area * aspect) ** 0.5)))
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        crop = pixels[top : top + h, left : left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop))


def _folders(root: Path, words: dict[str, str], problems: list[str]) -> dict[str, list[Photo]]:
    entries: dict[str, list[Photo]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / "word.txt").is_file():
            words[folder.name] = (folder / "word.txt").read_text().strip()
        photos = []
        for path in sorted(folder.iterdir()):
            if path.name.endswith(MASK_SUFFIX) or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            caption_path = path.with_suffix(".txt")
            mask_path = path.with_name(path.stem + MASK_SUFFIX)
            caption = caption_path.read_text().strip() if caption_path.exists() else None
            photos.append(Photo(path, caption, mask_path if mask_path.exists() else None))
        entries[folder.name] = photos
    return entries


def _manifest(path: Path, words: dict[str, str], problems: list[str]) -> dict[str, list[Photo]]:
    entries: dict[str, list[Photo]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = path.parent / row["image"]
            mask = path.parent / row["mask"] if row.get("mask") else None
            subject = str(row["subject"])
            entries.setdefault(subject, []).append(Photo(image, row.get("caption"), mask))
            if row.get("word"):
                if words.setdefault(subject, str(row["word"])) != str(row["word"]):
                    problems.append(
                        f"{path}:{number}: subject '{subject}' has two words, '{words[subject]}' and '{row['word']}'"
                    )
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"{path}:{number}: expected a JSON object with 'image' and 'subject' ({error})")
    return entries


def _check_photo(
    photo: Photo, min_size: int, caption_problem: Callable[[str], Optional[str]], problems: list[str]
) -> bool:
    size = _image_size(photo.path, problems)
    if size is None:
        return False
    ok = True
    if min(size) < min_size:
        problems.append(f"{photo.path}: {size[0]}x{size[1]} pixels, smaller than {min_size} on a side")
        ok = False
    if photo.mask is not None:
        mask_size = _image_size(photo.mask, problems)
        if mask_size is None:
            ok = False
        elif mask_size != size:
            problems.append(f"{photo.mask}: mask is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}")
            ok = False
    problem = caption_problem(photo.caption) if photo.caption is not None else None
    if problem:
        problems.append(f"{photo.path}: its caption {problem}: {photo.caption!r}")
        ok = False
    return ok


def _image_size(path: Path, problems: list[str]) -> Optional[tuple[int, int]]:
    if not path.exists():
        problems.append(f"{path}: missing")
        return None
    if path.stat().st_size == 0:
        problems.append(f"{path}: empty file")
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        problems.append(f"{path}: unreadable image ({error})")
        return None
