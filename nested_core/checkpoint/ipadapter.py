"""IP-Adapter-Plus files read as nested adapters.

Layout (``image_proj.*`` resampler + ``ip_adapter.{2i+1}.to_k_ip/to_v_ip``) as published for
``ip-adapter-plus[-face]_sd15`` and ``ip-adapter-plus[-face]_sdxl_vit-h``. The resampler is our
Q-Former; ``to_k_ip`` / ``to_v_ip`` of layer i give that layer's nested keys and values. Nothing
in the file states the hyperparameters, so they are read off tensor shapes (heads follow the
layout's fixed head width of 64).
"""

from __future__ import annotations

import re

from torch import Tensor

from ..adapter import AdapterConfig, family_of_context_dim
from ..errors import AdapterFileError
from ..layers import ip_adapter_number
from ..qformer import QFormerConfig
from .reader import RawCheckpoint
from .schema import check_names_and_shapes, load_finite, qformer_shapes, shape_of

FILE_LAYOUT = "IP-Adapter-Plus"
HEAD_DIM = 64
_LAYER_NAME = re.compile(r"^ip_adapter\.(\d+)\.to_[kv]_ip\.weight$")
_RESAMPLER_LAYER = re.compile(r"^image_proj\.layers\.(\d+)\.")


def is_ip_adapter(raw: RawCheckpoint) -> bool:
    return any(name.startswith("image_proj.") for name in raw.info) and any(
        name.startswith("ip_adapter.") for name in raw.info
    )


def read_ip_adapter_plus(raw: RawCheckpoint) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """Infer the configuration from shapes, check every tensor, and rename to the module's names."""
    if "image_proj.latents" not in raw.info:
        kind = (
            "an IP-Adapter FaceID file"
            if any("perceiver_resampler" in n for n in raw.info)
            else "a plain IP-Adapter file (one image embedding, no resampler)"
        )
        raise AdapterFileError(
            raw.path,
            kind,
            "an IP-Adapter-Plus file (with the 'image_proj.latents' resampler)",
            "Nested attention needs the Plus resampler's tokens: use an ip-adapter-plus or plus-face file.",
        )
    qformer = _infer_qformer(raw)
    config = AdapterConfig(
        qformer=qformer, layer_dims=_infer_layer_dims(raw), base_family=family_of_context_dim(qformer.out_dim)
    )

    expected = qformer_shapes(config.qformer, "image_proj.")
    for i, width in enumerate(config.layer_dims):
        n = ip_adapter_number(i)
        expected[f"ip_adapter.{n}.to_k_ip.weight"] = (width, config.context_dim)
        expected[f"ip_adapter.{n}.to_v_ip.weight"] = (width, config.context_dim)
    check_names_and_shapes(raw, expected, FILE_LAYOUT)

    tensors = load_finite(raw)
    state = {
        "qformer." + name[len("image_proj.") :]: t for name, t in tensors.items() if name.startswith("image_proj.")
    }
    for i in range(len(config.layer_dims)):
        n = ip_adapter_number(i)
        state[f"nested.{i}.to_k.weight"] = tensors[f"ip_adapter.{n}.to_k_ip.weight"]
        state[f"nested.{i}.to_v.weight"] = tensors[f"ip_adapter.{n}.to_v_ip.weight"]
    return config, state


def _infer_qformer(raw: RawCheckpoint) -> QFormerConfig:
    _, queries, dim = shape_of(raw, "image_proj.latents", 3, FILE_LAYOUT)
    _, in_dim = shape_of(raw, "image_proj.proj_in.weight", 2, FILE_LAYOUT)
    out_dim, _ = shape_of(raw, "image_proj.proj_out.weight", 2, FILE_LAYOUT)
    depth = 1 + max((int(m.group(1)) for m in map(_RESAMPLER_LAYER.match, raw.info) if m), default=-1)
    if depth == 0:
        raise AdapterFileError(raw.path, "no resampler layers ('image_proj.layers.*')", f"the {FILE_LAYOUT} resampler")
    inner, _ = shape_of(raw, "image_proj.layers.0.0.to_q.weight", 2, FILE_LAYOUT)
    hidden, _ = shape_of(raw, "image_proj.layers.0.1.1.weight", 2, FILE_LAYOUT)
    if inner % HEAD_DIM:
        raise AdapterFileError(
            raw.path, f"a resampler attention width of {inner}", f"a multiple of the layout's head width {HEAD_DIM}"
        )
    if hidden % dim:
        raise AdapterFileError(
            raw.path, f"a resampler feed-forward width of {hidden}", f"a multiple of its width {dim}"
        )
    return QFormerConfig(
        num_queries=queries,
        dim=dim,
        depth=depth,
        heads=inner // HEAD_DIM,
        head_dim=HEAD_DIM,
        ff_mult=hidden // dim,
        in_dim=in_dim,
        out_dim=out_dim,
    )


def _infer_layer_dims(raw: RawCheckpoint) -> tuple[int, ...]:
    numbers = sorted({int(m.group(1)) for m in map(_LAYER_NAME.match, raw.info) if m})
    expected = [ip_adapter_number(i) for i in range(len(numbers))]
    if not numbers or numbers != expected:
        raise AdapterFileError(
            raw.path,
            f"cross-attention layers numbered {_numbers(numbers)}",
            "layers numbered 1, 3, 5, ... without gaps ('ip_adapter.{n}.to_k_ip.weight')",
        )
    return tuple(shape_of(raw, f"ip_adapter.{n}.to_k_ip.weight", 2, FILE_LAYOUT)[0] for n in numbers)


def _numbers(numbers: list[int]) -> str:
    if not numbers:
        return "nowhere (none found)"
    return ", ".join(map(str, numbers[:6])) + (", ..." if len(numbers) > 6 else "")


def to_ip_adapter_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse renaming: a NestedAdapter state dict under IP-Adapter-Plus names."""
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith("qformer."):
            out["image_proj." + name[len("qformer.") :]] = tensor
        else:
            _, index, projection, _ = name.split(".")  # nested.{i}.to_k.weight
            out[f"ip_adapter.{ip_adapter_number(int(index))}.{projection}_ip.weight"] = tensor
    return out
