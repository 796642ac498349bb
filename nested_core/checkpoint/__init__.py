"""Adapter files: detection by content, validation, and the native format.

``load_adapter_checkpoint`` tries the native format, then IP-Adapter-Plus, then recognition by
structure (``structure.py``: a resampler plus key/value pairs under any names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..adapter import AdapterConfig
from ..errors import AdapterFileError
from ..layers import ip_adapter_number
from .ipadapter import FILE_LAYOUT as IP_ADAPTER_PLUS
from .ipadapter import is_ip_adapter, read_ip_adapter_plus
from .native import FILE_LAYOUT as NATIVE
from .native import is_native, read_native, save_native
from .reader import RawCheckpoint, read_checkpoint
from .schema import inspect_hint
from .structure import FILE_LAYOUT as BY_STRUCTURE
from .structure import NoResampler, Recognition, recognise

__all__ = [
    "AdapterCheckpoint",
    "load_adapter_checkpoint",
    "save_native",
    "NATIVE",
    "IP_ADAPTER_PLUS",
    "BY_STRUCTURE",
]


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A validated adapter file: its settings and the state dict of a ``NestedAdapter``."""

    path: str
    format: str  # NATIVE, IP_ADAPTER_PLUS, or "recognised by structure: ..." saying what was found
    container: str  # "safetensors" or "PyTorch pickle"
    config: AdapterConfig
    state_dict: dict[str, Tensor]
    groups: tuple[str, ...] = ()  # the file's tensor groups, e.g. "resampler 'resampler.*': 26 tensors"
    notes: tuple[str, ...] = ()  # how the settings were read (e.g. where the head count came from)
    layer_sources: tuple[str, ...] = ()  # where the weights of nested layer i came from, in diffusers order


def load_adapter_checkpoint(path: "str | os.PathLike[str]", heads: Optional[int] = None) -> AdapterCheckpoint:
    """Read any supported adapter file, whatever its name; raise AdapterFileError otherwise.

    Args:
        path: the file.
        heads: the resampler's head count, for files recognised by structure that state none
            (``python -m nested_core.convert ... --heads N``); the other formats fix their own.
    """
    raw = read_checkpoint(path)
    if is_native(raw):
        config, state = read_native(raw)
        return AdapterCheckpoint(raw.path, NATIVE, raw.container, config, state, **_native_report(raw, config))
    if is_ip_adapter(raw):
        try:
            config, state = read_ip_adapter_plus(raw)
        except AdapterFileError as refusal:
            try:  # IP-Adapter names around another naming of the resampler
                return _by_structure(raw, *recognise(raw, heads))
            except (AdapterFileError, NoResampler):
                raise refusal from None
        return AdapterCheckpoint(raw.path, IP_ADAPTER_PLUS, raw.container, config, state, **_ipa_report(raw, config))
    try:
        return _by_structure(raw, *recognise(raw, heads))
    except NoResampler as nothing:
        nearest = f"; nearest to a resampler: {nothing.nearest}" if nothing.nearest else ""
        raise AdapterFileError(
            raw.path,
            _what_it_is(raw) + nearest,
            f"a {NATIVE} or {IP_ADAPTER_PLUS} adapter, or a Perceiver resampler with one key/value "
            "projection pair per cross-attention layer",
            "Put only nested adapters in models/nested_adapters. " + inspect_hint(raw.path),
        ) from None


def _by_structure(
    raw: RawCheckpoint, config: AdapterConfig, state: dict[str, Tensor], how: Recognition
) -> AdapterCheckpoint:
    return AdapterCheckpoint(
        raw.path, how.summary, raw.container, config, state, how.groups, how.notes, how.layer_sources
    )


def _native_report(raw: RawCheckpoint, config: AdapterConfig) -> dict[str, tuple[str, ...]]:
    """groups, notes and layer_sources of a native file (AdapterCheckpoint's fields)."""
    count = len(config.layer_dims)
    keys = config.layer_keys
    return {
        "groups": (
            f"Q-Former 'qformer.*': {len(raw.info) - 2 * count} tensors",
            f"'nested.{{i}}': {2 * count} tensors",
        ),
        "notes": (
            "settings stated in the metadata",
            "layer order: " + ("layer ids in the metadata" if keys else "diffusers order (no layer ids)"),
        ),
        "layer_sources": tuple(f"nested.{i}" + (f" ({keys[i]})" if keys else "") for i in range(count)),
    }


def _ipa_report(raw: RawCheckpoint, config: AdapterConfig) -> dict[str, tuple[str, ...]]:
    """groups, notes and layer_sources of an IP-Adapter-Plus file."""
    count = len(config.layer_dims)
    return {
        "groups": (
            f"resampler 'image_proj.*': {len(raw.info) - 2 * count} tensors",
            f"'ip_adapter.{{2i+1}}.to_k_ip/to_v_ip': {2 * count} tensors",
        ),
        "notes": (
            f"heads: {config.qformer.heads} x head width {config.qformer.head_dim} (the layout's head width)",
            "layer order: by index, numbered 1, 3, 5, ... (diffusers processor order)",
        ),
        "layer_sources": tuple(f"ip_adapter.{ip_adapter_number(i)}" for i in range(count)),
    }


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
    return f"{len(names)} tensors of an unknown layout with no Perceiver resampler (e.g. '{names[0]}')"
