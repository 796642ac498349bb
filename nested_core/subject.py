"""Encoded subjects: the Q-Former tokens of one subject, and their safetensors file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import Tensor

from .checkpoint.reader import read_checkpoint
from .checkpoint.schema import load_finite, whole_number
from .errors import AdapterFileError
from .files import write_atomically

FORMAT_NAME = "nested-subject"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SubjectTokens:
    """The nested tokens of one subject and the adapter whose encoder made them."""

    tokens: Tensor  # [1, T, C] float32, on the CPU
    adapter_fingerprint: str  # see adapter.fingerprint
    num_images: int  # reference images combined into these tokens
    combine: str  # how they were combined ("average" or "concat")
    patch_maps: Optional[Tensor] = None  # [T, g, g]: each token's Q-Former attention over the CLIP patch grid
    token_photo: Optional[Tensor] = None  # [T] long: the photo each token came from (-1: averaged over photos)

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def context_dim(self) -> int:
        return self.tokens.shape[2]


def save_subject(path: "str | os.PathLike[str]", subject: SubjectTokens) -> None:
    """Write a subject file; it appears complete or not at all."""
    tensors = {"tokens": subject.tokens.detach().to("cpu", torch.float32).contiguous()}
    if subject.patch_maps is not None and subject.token_photo is not None:
        tensors["patch_maps"] = subject.patch_maps.detach().to("cpu", torch.float32).contiguous()
        tensors["token_photo"] = subject.token_photo.detach().to("cpu", torch.int64).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "adapter_fingerprint": subject.adapter_fingerprint,
        "num_images": str(subject.num_images),
        "combine": subject.combine,
    }
    write_atomically(path, lambda partial: save_file(tensors, partial, metadata=metadata))


def load_subject(path: "str | os.PathLike[str]") -> SubjectTokens:
    """Read a subject file written by save_subject; AdapterFileError for anything else."""
    raw = read_checkpoint(path)
    meta = raw.metadata
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            raw.path,
            f"a file with format={meta.get('format')!r}",
            f"a subject file (format='{FORMAT_NAME}') written by the Save Subject node",
        )
    version = whole_number(meta.get("format_version", ""))
    if version is None:
        raise AdapterFileError(
            raw.path, f"format_version {meta.get('format_version')!r}", "a version number (ASCII digits)"
        )
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            raw.path,
            f"format_version {meta.get('format_version')!r}",
            f"version {FORMAT_VERSION} or older",
            "Update the pack to read newer subject files.",
        )
    if not _layout_ok(raw):
        found = ", ".join(f"'{n}' {list(i.shape)} {i.dtype}" for n, i in raw.info.items()) or "no tensors"
        raise AdapterFileError(
            raw.path,
            found,
            "a float tensor 'tokens' [1, T, C], optionally with 'patch_maps' [T, g, g] and 'token_photo' [T]",
        )
    num_images = whole_number(meta.get("num_images", "1"))
    if num_images is None:
        raise AdapterFileError(
            raw.path, f"metadata num_images={meta['num_images']!r}", "a whole number of images (ASCII digits)"
        )
    tensors = load_finite(raw)
    return SubjectTokens(
        tokens=tensors["tokens"].float(),
        adapter_fingerprint=meta.get("adapter_fingerprint", ""),
        num_images=num_images,
        combine=meta.get("combine", "average"),
        patch_maps=tensors["patch_maps"].float() if "patch_maps" in tensors else None,
        token_photo=tensors["token_photo"].long() if "token_photo" in tensors else None,
    )


def _layout_ok(raw) -> bool:
    info = raw.info
    tokens = info.get("tokens")
    if tokens is None or len(tokens.shape) != 3 or tokens.shape[0] != 1 or not _is_float(tokens.dtype):
        return False
    if set(info) == {"tokens"}:
        return True
    maps, photo = info.get("patch_maps"), info.get("token_photo")
    return (
        set(info) == {"tokens", "patch_maps", "token_photo"}
        and len(maps.shape) == 3
        and maps.shape[0] == tokens.shape[1]
        and _is_float(maps.dtype)
        and photo.shape == (tokens.shape[1],)
        and photo.dtype == torch.int64
    )


def _is_float(dtype) -> bool:
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def free_subject_path(folder: str, prefix: str) -> str:
    """<folder>/<prefix>_00001.safetensors, the first number not taken."""
    prefix = os.path.basename(prefix.strip()) or "subject"
    os.makedirs(folder, exist_ok=True)
    number = 1
    while os.path.exists(path := os.path.join(folder, f"{prefix}_{number:05d}.safetensors")):
        number += 1
    return path
