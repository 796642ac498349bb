"""Encoded subjects: the Q-Former tokens of one subject, and their safetensors file."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from torch import Tensor

from .checkpoint.reader import read_checkpoint
from .checkpoint.schema import load_finite
from .errors import AdapterFileError

FORMAT_NAME = "nested-subject"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SubjectTokens:
    """The nested tokens of one subject and the adapter whose encoder made them."""

    tokens: Tensor            # [1, N, C] float32, on the CPU
    adapter_fingerprint: str  # see adapter.fingerprint
    num_images: int           # reference images combined into these tokens
    combine: str              # how they were combined ("average" or "concat")

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def context_dim(self) -> int:
        return self.tokens.shape[2]


def save_subject(path: "str | os.PathLike[str]", subject: SubjectTokens) -> None:
    """Write a subject file; it appears complete or not at all."""
    path = os.fspath(path)
    partial = path + ".partial"
    save_file({"tokens": subject.tokens.detach().to("cpu", torch.float32).contiguous()}, partial, metadata={
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "adapter_fingerprint": subject.adapter_fingerprint,
        "num_images": str(subject.num_images),
        "combine": subject.combine,
    })
    os.replace(partial, path)


def load_subject(path: "str | os.PathLike[str]") -> SubjectTokens:
    """Read a subject file written by save_subject; AdapterFileError for anything else."""
    raw = read_checkpoint(path)
    meta = raw.metadata
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(raw.path, f"a file with format={meta.get('format')!r}",
                               f"a subject file (format='{FORMAT_NAME}') written by the Save Subject node")
    if not meta.get("format_version", "").isdigit() or int(meta["format_version"]) > FORMAT_VERSION:
        raise AdapterFileError(raw.path, f"format_version {meta.get('format_version')!r}",
                               f"version {FORMAT_VERSION} or older", "Update the pack to read newer subject files.")
    info = raw.info.get("tokens")
    if set(raw.info) != {"tokens"} or info is None or len(info.shape) != 3 or info.shape[0] != 1 \
            or not (isinstance(info.dtype, torch.dtype) and info.dtype.is_floating_point):
        found = ", ".join(f"'{n}' {list(i.shape)} {i.dtype}" for n, i in raw.info.items()) or "no tensors"
        raise AdapterFileError(raw.path, found, "one float tensor 'tokens' of shape [1, N, C]")
    num_images = meta.get("num_images", "1")
    return SubjectTokens(
        tokens=load_finite(raw)["tokens"].float(),
        adapter_fingerprint=meta.get("adapter_fingerprint", ""),
        num_images=int(num_images) if num_images.isdigit() else 1,
        combine=meta.get("combine", "average"),
    )
