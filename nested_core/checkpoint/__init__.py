"""Adapter files: detection by content, validation, and the native format."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import Tensor

from ..adapter import AdapterConfig
from ..errors import AdapterFileError
from .ipadapter import FILE_LAYOUT as IP_ADAPTER_PLUS
from .ipadapter import is_ip_adapter, read_ip_adapter_plus
from .native import FILE_LAYOUT as NATIVE
from .native import is_native, read_native, save_native
from .reader import RawCheckpoint, read_checkpoint

__all__ = ["AdapterCheckpoint", "load_adapter_checkpoint", "save_native", "NATIVE", "IP_ADAPTER_PLUS"]


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A validated adapter file: its settings and the state dict of a ``NestedAdapter``."""

    path: str
    format: str  # NATIVE or IP_ADAPTER_PLUS
    container: str  # "safetensors" or "PyTorch pickle"
    config: AdapterConfig
    state_dict: dict[str, Tensor]


def load_adapter_checkpoint(path: "str | os.PathLike[str]") -> AdapterCheckpoint:
    """Read any supported adapter file, whatever its name; raise AdapterFileError otherwise."""
    raw = read_checkpoint(path)
    if is_native(raw):
        config, state = read_native(raw)
        file_layout = NATIVE
    elif is_ip_adapter(raw):
        config, state = read_ip_adapter_plus(raw)
        file_layout = IP_ADAPTER_PLUS
    else:
        raise AdapterFileError(
            raw.path,
            _what_it_is(raw),
            f"a {NATIVE} or {IP_ADAPTER_PLUS} adapter",
            "Put only nested adapters in models/nested_adapters.",
        )
    return AdapterCheckpoint(raw.path, file_layout, raw.container, config, state)


_KNOWN_PREFIXES = (
    (("model.diffusion_model.", "first_stage_model."), "a Stable Diffusion checkpoint"),
    (("input_blocks.", "down_blocks."), "a UNet"),
    (("vision_model.", "visual."), "a CLIP vision model"),
    (("lora_unet_", "lora_te"), "a LoRA"),
    (("id_encoder.",), "a PhotoMaker model"),
)


def _what_it_is(raw: RawCheckpoint) -> str:
    """Name the kind of file when it is a common model that landed in the wrong folder."""
    names = list(raw.info)
    if not names:
        return "a file with no tensors"
    for prefixes, label in _KNOWN_PREFIXES:
        if any(name.startswith(prefixes) for name in names):
            return f"{label} (tensors like '{names[0]}')"
    return f"{len(names)} tensors of an unknown layout (e.g. '{names[0]}')"
