"""Nodes for tests and the demo only (never part of the pack): tiny models, probes and a foreign patch.

``register()`` adds them to ComfyUI's node table in this process.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io
from torch import Tensor

from nested_attention.nodes.contract import sigma_of
from nested_attention.nodes.model_layers import attn2_sites

from . import tiny_models

CAPTURED: dict[str, Any] = {}
RECORDS: dict[str, list["Attn2Call"]] = {}
_counter = itertools.count()


class NestedDevTinyCheckpoint(io.ComfyNode):
    """Random-weight stand-in for a checkpoint loader: same outputs (MODEL, CLIP, VAE)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevTinyCheckpoint",
            display_name="Tiny random checkpoint (dev)",
            category="nested_attention/dev",
            inputs=[io.Combo.Input("kind", options=["sd15", "sdxl"]), io.Int.Input("seed", default=0)],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, kind: str, seed: int) -> io.NodeOutput:
        return io.NodeOutput(
            tiny_models.build_unet(kind, seed), tiny_models.build_clip(kind, seed), tiny_models.build_vae(seed)
        )


class NestedDevTinyCLIPVision(io.ComfyNode):
    """Random-weight stand-in for a CLIP vision loader (ViT layout, width 48)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevTinyCLIPVision",
            display_name="Tiny random CLIP vision (dev)",
            category="nested_attention/dev",
            inputs=[io.Int.Input("seed", default=0)],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_models.build_clip_vision(seed))


class NestedDevCapture(io.ComfyNode):
    """Keeps whatever reaches it in CAPTURED[label] for the test to inspect."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevCapture",
            display_name="Capture (dev)",
            category="nested_attention/dev",
            inputs=[io.AnyType.Input("value"), io.String.Input("label", default="out")],
            outputs=[],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, value: Any, label: str) -> io.NodeOutput:
        CAPTURED[label] = value
        return io.NodeOutput()

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        return next(_counter)  # always run, so every test sees its own value


@dataclass
class Attn2Call:
    layer: tuple
    q: Tensor
    k: Tensor
    v: Tensor
    out: Tensor
    uuids: list
    cond_or_uncond: list
    sigma: float
    heads: int
    activations_shape: list
    original_shape: list


@dataclass
class Recorder:
    """Wraps an attn2 replacement and records its inputs and output."""

    inner: Callable
    layer: tuple
    label: str

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        RECORDS.setdefault(self.label, []).append(
            Attn2Call(
                self.layer,
                q.detach().clone(),
                k.detach().clone(),
                v.detach().clone(),
                out.detach().clone(),
                list(extra_options.get("uuids", [])),
                list(extra_options["cond_or_uncond"]),
                sigma_of(extra_options["sigmas"]),
                int(extra_options["n_heads"]),
                list(extra_options.get("activations_shape", [])),
                list(extra_options["original_shape"]),
            )
        )
        return out

    def __deepcopy__(self, memo):
        return self


class NestedDevRecordAttn2(io.ComfyNode):
    """Records every attn2 replacement call of the model into RECORDS[label]."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevRecordAttn2",
            display_name="Record attn2 (dev)",
            category="nested_attention/dev",
            inputs=[io.Model.Input("model"), io.String.Input("label", default="calls")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, label: str) -> io.NodeOutput:
        RECORDS[label] = []
        patched = model.clone()
        replace = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for key, inner in list(replace.items()):
            patched.set_model_attn2_replace(Recorder(inner, key, label), *key)
        return io.NodeOutput(patched)


def foreign_output(q: Tensor, k: Tensor, v: Tensor, heads: int, strength: float) -> Tensor:
    """What the stand-in foreign pack computes: attention plus a query-dependent term."""
    return optimized_attention(q, k, v, heads) + strength * torch.tanh(q)


class ForeignPatch:
    """An attn2 replacement shaped like IPAdapter_plus's: own output plus add()-ed callbacks."""

    def __init__(self, strength: float):
        self.strength = strength
        self.callbacks: list = []

    def __call__(self, q, k, v, extra_options):
        out = foreign_output(q, k, v, extra_options["n_heads"], self.strength)
        for callback, kwargs in self.callbacks:
            out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def add(self, callback, **kwargs):
        self.callbacks.append((callback, kwargs))


def foreign_callback(out, q, k, v, extra_options, strength=0.0, **kwargs):
    return strength * torch.sin(q)


class NestedDevForeignPatch(io.ComfyNode):
    """Puts a foreign replacement on every attn2 site, or add()s a callback to what is there."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NestedDevForeignPatch",
            display_name="Foreign attn2 patch (dev)",
            category="nested_attention/dev",
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("strength", default=0.5),
                io.Combo.Input("mode", options=["replace", "add"]),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, strength: float, mode: str) -> io.NodeOutput:
        patched = model.clone()
        for key in attn2_sites(patched):
            key = tuple(key)
            replace = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
            if mode == "add" and hasattr(replace.get(key), "add"):
                replace[key].add(foreign_callback, strength=strength, sigma_start=1e9, sigma_end=0.0)
            else:
                patched.set_model_attn2_replace(ForeignPatch(strength), *key)
        return io.NodeOutput(patched)


DEV_NODES = [
    NestedDevTinyCheckpoint,
    NestedDevTinyCLIPVision,
    NestedDevCapture,
    NestedDevRecordAttn2,
    NestedDevForeignPatch,
]


def register() -> None:
    """Add the dev nodes and the toy world's loaders to ComfyUI's node table (tests and demo only)."""
    import nodes
    from toy_world.nodes import TOY_NODES

    for node in [*DEV_NODES, *TOY_NODES]:
        schema = node.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node
        nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
