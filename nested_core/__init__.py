"""Nested Attention in plain PyTorch: the attention math, the Q-Former encoder, adapters and
their files. Nothing here imports ComfyUI, so trainers, benchmarks and tests can use it alone."""

from .adapter import AdapterConfig, NestedAdapter, build_adapter, fingerprint
from .attention import NestedSubject, TokenPositions, nested_attention, plain_attention
from .checkpoint import AdapterCheckpoint, load_adapter_checkpoint, save_native
from .errors import AdapterFileError, NestedAttentionError
from .layers import LayerBinding, LayerKey, SiteShape, bind_layers, diffusers_order
from .qformer import QFormer, QFormerConfig
from .subject import SubjectTokens, load_subject, save_subject

__all__ = [
    "AdapterCheckpoint",
    "AdapterConfig",
    "AdapterFileError",
    "LayerBinding",
    "LayerKey",
    "NestedAdapter",
    "NestedAttentionError",
    "NestedSubject",
    "QFormer",
    "QFormerConfig",
    "SiteShape",
    "SubjectTokens",
    "TokenPositions",
    "bind_layers",
    "build_adapter",
    "diffusers_order",
    "fingerprint",
    "load_adapter_checkpoint",
    "load_subject",
    "nested_attention",
    "plain_attention",
    "save_native",
    "save_subject",
]
