"""Checks shared by the adapter formats: names, shapes, dtypes and values of tensors."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from ..errors import AdapterFileError
from ..qformer import QFormerConfig
from .reader import RawCheckpoint

_MAX_LISTED = 4
#: Trained adapter weights stay orders of magnitude below this; larger values mean bit rot.
PLAUSIBLE_MAGNITUDE = 1e4


def qformer_shapes(config: QFormerConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every Q-Former tensor, in the IP-Adapter-Plus naming."""
    inner = config.heads * config.head_dim
    hidden = config.dim * config.ff_mult
    shapes = {
        "latents": (1, config.num_queries, config.dim),
        "proj_in.weight": (config.dim, config.in_dim),
        "proj_in.bias": (config.dim,),
        "proj_out.weight": (config.out_dim, config.dim),
        "proj_out.bias": (config.out_dim,),
        "norm_out.weight": (config.out_dim,),
        "norm_out.bias": (config.out_dim,),
    }
    for i in range(config.depth):
        layer = f"layers.{i}"
        shapes.update(
            {
                f"{layer}.0.norm1.weight": (config.dim,),
                f"{layer}.0.norm1.bias": (config.dim,),
                f"{layer}.0.norm2.weight": (config.dim,),
                f"{layer}.0.norm2.bias": (config.dim,),
                f"{layer}.0.to_q.weight": (inner, config.dim),
                f"{layer}.0.to_kv.weight": (2 * inner, config.dim),
                f"{layer}.0.to_out.weight": (config.dim, inner),
                f"{layer}.1.0.weight": (config.dim,),
                f"{layer}.1.0.bias": (config.dim,),
                f"{layer}.1.1.weight": (hidden, config.dim),
                f"{layer}.1.3.weight": (config.dim, hidden),
            }
        )
    return {prefix + name: shape for name, shape in shapes.items()}


def check_names_and_shapes(raw: RawCheckpoint, expected: Mapping[str, tuple[int, ...]], file_layout: str) -> None:
    """Every expected tensor present with its shape and a floating dtype; nothing else present."""
    missing = [name for name in expected if name not in raw.info]
    if missing:
        raise AdapterFileError(
            raw.path,
            f"{len(missing)} missing tensor(s): {_listing(missing)}",
            f"every tensor of the {file_layout} layout",
            "The file is incomplete or of another kind.",
        )
    unexpected = [name for name in raw.info if name not in expected]
    if unexpected:
        raise AdapterFileError(
            raw.path,
            f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}",
            f"only the tensors of the {file_layout} layout",
        )
    for name, shape in expected.items():
        found = raw.info[name]
        if found.shape != tuple(shape):
            raise AdapterFileError(
                raw.path,
                f"tensor '{name}' of shape {list(found.shape)}",
                f"shape {list(shape)} for the {file_layout} layout",
            )
        if not (isinstance(found.dtype, torch.dtype) and found.dtype.is_floating_point):
            raise AdapterFileError(
                raw.path,
                f"tensor '{name}' of dtype {found.dtype}",
                "a floating-point dtype (float16, bfloat16 or float32)",
            )


def load_finite(raw: RawCheckpoint) -> dict[str, Tensor]:
    """Read the tensors and refuse NaN, infinite or absurdly large weights (signs of corruption)."""
    tensors = raw.load()
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(
                raw.path,
                f"NaN or infinite values in tensor '{name}'",
                "finite weights",
                "The file is corrupted; download it again.",
            )
        largest = float(tensor.abs().max()) if tensor.numel() else 0.0
        if largest > PLAUSIBLE_MAGNITUDE:
            raise AdapterFileError(
                raw.path,
                f"values up to {largest:.3g} in tensor '{name}'",
                f"weights below {PLAUSIBLE_MAGNITUDE:g} in magnitude, as trained adapters have",
                "The file is corrupted; download it again.",
            )
    return tensors


def shape_of(raw: RawCheckpoint, name: str, rank: int, file_layout: str) -> tuple[int, ...]:
    """The shape of a tensor the layout needs, with an error if it is absent or of another rank."""
    if name not in raw.info:
        raise AdapterFileError(raw.path, f"a missing tensor '{name}'", f"every tensor of the {file_layout} layout")
    shape = raw.info[name].shape
    if len(shape) != rank or min(shape, default=1) <= 0:
        raise AdapterFileError(
            raw.path,
            f"tensor '{name}' of shape {list(shape)}",
            f"a non-empty {rank}-dimensional tensor for the {file_layout} layout",
        )
    return shape


def whole_number(text: str) -> Optional[int]:
    """The value of a string of ASCII digits ("12"); None for anything else ("", "-1", "²", "٣", "1²").

    ``str.isdigit`` alone accepts superscripts and other scripts' digits, which ``int`` then refuses.
    """
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def inspect_hint(path: str) -> str:
    """What to run to see what the loader recognised in a file."""
    return f"Run 'python -m nested_core.inspect \"{path}\"' (from the pack's folder) to see what was recognised."


def _listing(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in sorted(names)[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
