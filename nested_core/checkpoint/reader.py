"""Safe reading of tensor files, recognised by their bytes rather than their names.

Two containers are understood:

* safetensors (``.safetensors``, ``.sft``, or any name): header JSON + raw tensors;
* PyTorch pickles (``.bin``, ``.pt``, ``.ckpt``): opened with ``weights_only=True``, so a file
  that would run code when unpickled is refused and nothing in it is executed.

Every failure becomes an :class:`AdapterFileError` naming the file, what was found and what was
expected. Tensor names, shapes and dtypes are available before any tensor data is read, so a
wrong multi-gigabyte file is rejected without loading it.
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import AdapterFileError

SAFETENSORS = "safetensors"
TORCH_PICKLE = "PyTorch pickle"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: "torch.dtype | str"  # a string for dtypes torch cannot hold


@dataclass(frozen=True)
class RawCheckpoint:
    """Names, shapes and metadata of a tensor file; ``load`` reads the tensors themselves."""

    path: str
    container: str
    metadata: dict[str, str]
    info: dict[str, TensorInfo]
    _load: Callable[[], dict[str, Tensor]]

    def load(self) -> dict[str, Tensor]:
        """Read every tensor; corrupted data raises AdapterFileError."""
        try:
            return self._load()
        except AdapterFileError:
            raise
        except Exception as exc:  # the libraries raise many types for damaged data
            raise AdapterFileError(
                self.path,
                f"a damaged {self.container} file ({_short(exc)})",
                "complete tensor data",
                "Download the file again.",
            ) from exc


def read_checkpoint(path: "str | os.PathLike[str]") -> RawCheckpoint:
    """Open ``path`` and index its tensors, choosing the container from the file's first bytes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AdapterFileError(path, "no such file", "an existing adapter file")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if size == 0:
        raise AdapterFileError(
            path, "an empty file (0 bytes)", "a safetensors or PyTorch file", "The download or copy did not finish."
        )
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return _read_torch(path)
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    raise AdapterFileError(
        path,
        f"unrecognised content ({_describe_head(head)})",
        "a safetensors file or a PyTorch .bin/.pt file",
        _hint_for_head(head),
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return 2 <= header_length <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: str) -> RawCheckpoint:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            info = {}
            for name in f.keys():
                piece = f.get_slice(name)
                info[name] = TensorInfo(
                    tuple(piece.get_shape()), _SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype())
                )
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterFileError(
            path,
            f"a damaged or truncated safetensors file ({_short(exc)})",
            "a complete safetensors file",
            "Download the file again.",
        ) from exc

    def load() -> dict[str, Tensor]:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}

    return RawCheckpoint(path, SAFETENSORS, metadata, info, load)


def _read_torch(path: str) -> RawCheckpoint:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip pickle
    except pickle.UnpicklingError as exc:
        raise AdapterFileError(
            path,
            "a pickle that needs code or classes beyond plain tensors (refused; nothing in it was run)",
            "a file of tensors only",
            "Only load files from sources you trust; prefer .safetensors.",
        ) from exc
    except Exception as exc:  # a damaged pickle or zip can fail in any of a dozen library exceptions
        raise AdapterFileError(
            path,
            f"a damaged or truncated PyTorch file ({_short(exc)})",
            "a complete PyTorch .bin/.pt file",
            "Download the file again.",
        ) from exc

    tensors = _flatten(path, obj)
    info = {name: TensorInfo(tuple(t.shape), t.dtype) for name, t in tensors.items()}
    return RawCheckpoint(path, TORCH_PICKLE, {}, info, lambda: tensors)


def _flatten(path: str, obj: object, prefix: str = "") -> dict[str, Tensor]:
    """{"image_proj": {"latents": t}} -> {"image_proj.latents": t}"""
    if not isinstance(obj, dict):
        raise AdapterFileError(
            path, f"a pickled {type(obj).__name__} at '{prefix or '<top>'}'", "a dictionary of tensors"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_flatten(path, value, name))
        else:
            raise AdapterFileError(
                path, f"a {type(value).__name__} at '{name}'", "only tensors and dictionaries of tensors"
            )
    return out


def _describe_head(head: bytes) -> str:
    printable = head[:24].decode("ascii", "replace")
    if printable.isprintable():
        return f"starts with {printable!r}"
    return "starts with bytes " + head[:12].hex(" ")


def _hint_for_head(head: bytes) -> str:
    text = head.lower()
    if text.lstrip().startswith((b"<!doctype html", b"<html")):
        return "It is a web page, not a model: the download saved an error or login page."
    if text.startswith(b"version https://git-lfs"):
        return "It is a Git LFS pointer: fetch the real file with 'git lfs pull' or download it directly."
    return "Check that the file is an adapter and that its download finished."


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
