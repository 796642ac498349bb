"""The pack's own adapter format: one safetensors file with its settings in the metadata.

See docs/FORMAT.md for the specification. Tensors: ``qformer.*`` (IP-Adapter-Plus resampler
names) and ``nested.{i}.to_k.weight`` / ``nested.{i}.to_v.weight`` for layer i in diffusers order.
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..adapter import AdapterConfig
from ..errors import AdapterFileError
from ..files import write_atomically
from ..layers import LayerKey
from ..qformer import QFormerConfig
from .reader import RawCheckpoint
from .schema import check_names_and_shapes, load_finite, qformer_shapes, shape_of, whole_number

FORMAT_NAME = "nested-adapter"
FORMAT_VERSION = 1
FILE_LAYOUT = "native nested-adapter"
DIFFUSERS_ORDER = "diffusers"
_NESTED_NAME = re.compile(r"^nested\.(\d+)\.to_k\.weight$")


def is_native(raw: RawCheckpoint) -> bool:
    return raw.metadata.get("format") == FORMAT_NAME or any(
        name.startswith(("qformer.", "nested.")) for name in raw.info
    )


def read_native(raw: RawCheckpoint) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """Parse the metadata, check every tensor against it, and return the module's state dict."""
    meta = raw.metadata
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            raw.path,
            "native tensor names but no 'format' metadata",
            f"metadata format='{FORMAT_NAME}' (see docs/FORMAT.md)",
        )
    version = _integer(raw, "format_version")
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            raw.path,
            f"format_version {version}",
            f"version {FORMAT_VERSION} or older",
            "It was written by a newer release of the pack: update the pack.",
        )
    try:
        qformer = QFormerConfig.from_dict(json.loads(_field(raw, "qformer")))
    except (ValueError, TypeError) as exc:
        raise AdapterFileError(
            raw.path, f"unusable 'qformer' metadata ({exc})", "a JSON object of positive integers (see docs/FORMAT.md)"
        ) from exc
    for name, value in (
        ("clip_vision_width", qformer.in_dim),
        ("num_tokens", qformer.num_queries),
        ("context_dim", qformer.out_dim),
    ):
        if _integer(raw, name) != value:
            raise AdapterFileError(
                raw.path, f"metadata {name}={meta[name]} but qformer settings say {value}", "consistent metadata"
            )

    count = len([n for n in raw.info if _NESTED_NAME.match(n)])
    dims = tuple(shape_of(raw, f"nested.{i}.to_k.weight", 2, FILE_LAYOUT)[0] for i in range(count))
    config = AdapterConfig(
        qformer=qformer,
        layer_dims=dims,
        layer_keys=_layer_keys(raw, count),
        base_family=meta.get("base_family", "custom"),
        class_word=meta.get("class_word", ""),
    )
    if count == 0:
        raise AdapterFileError(
            raw.path, "no nested layers ('nested.{i}.to_k.weight')", "one layer per cross-attention layer"
        )
    check_names_and_shapes(raw, expected_shapes(config), FILE_LAYOUT)
    return config, load_finite(raw)


def expected_shapes(config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    shapes = qformer_shapes(config.qformer, "qformer.")
    for i, width in enumerate(config.layer_dims):
        shapes[f"nested.{i}.to_k.weight"] = (width, config.context_dim)
        shapes[f"nested.{i}.to_v.weight"] = (width, config.context_dim)
    return shapes


def metadata_for(config: AdapterConfig) -> dict[str, str]:
    """The safetensors metadata that describes ``config``."""
    order = [str(k) for k in config.layer_keys] if config.layer_keys is not None else DIFFUSERS_ORDER
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "base_family": config.base_family,
        "class_word": config.class_word,
        "clip_vision_width": str(config.clip_vision_width),
        "num_tokens": str(config.num_tokens),
        "context_dim": str(config.context_dim),
        "qformer": json.dumps(config.qformer.to_dict()),
        "layer_order": json.dumps(order),
    }


def save_native(
    path: "str | os.PathLike[str]",
    config: AdapterConfig,
    state_dict: Mapping[str, Tensor],
    dtype: "torch.dtype | None" = None,
) -> None:
    """Write an adapter; the file appears complete or not at all (written aside, then renamed)."""
    expected = expected_shapes(config)
    if set(state_dict) != set(expected):
        missing = sorted(set(expected) - set(state_dict))[:3]
        extra = sorted(set(state_dict) - set(expected))[:3]
        raise ValueError(f"state dict does not match the adapter config (missing {missing}, unexpected {extra})")
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        tensors[name] = (tensor.to(dtype) if dtype is not None else tensor).contiguous()
    write_atomically(path, lambda partial: save_file(tensors, partial, metadata=metadata_for(config)))


def _field(raw: RawCheckpoint, name: str) -> str:
    if name not in raw.metadata:
        raise AdapterFileError(
            raw.path, f"no '{name}' metadata", f"the metadata of the {FILE_LAYOUT} format (docs/FORMAT.md)"
        )
    return raw.metadata[name]


def _integer(raw: RawCheckpoint, name: str) -> int:
    text = _field(raw, name)
    value = whole_number(text)
    if value is None:
        raise AdapterFileError(raw.path, f"metadata {name}={text!r}", "a positive integer (ASCII digits)")
    return value


def _layer_keys(raw: RawCheckpoint, count: int) -> "tuple[LayerKey, ...] | None":
    try:
        order = json.loads(_field(raw, "layer_order"))
        if order == DIFFUSERS_ORDER:
            return None
        if not isinstance(order, list):
            raise ValueError("not a list")
        keys = tuple(LayerKey.parse(str(item)) for item in order)
    except ValueError as exc:
        raise AdapterFileError(
            raw.path,
            f"unusable 'layer_order' metadata ({exc})",
            f'\'"{DIFFUSERS_ORDER}"\' or a JSON list of ids like "input.4.0"',
        ) from exc
    if len(keys) != count or len(set(keys)) != count:
        raise AdapterFileError(
            raw.path,
            f"{len(keys)} layer ids ({len(set(keys))} distinct) for {count} layers",
            "one distinct id per nested layer",
        )
    return keys
