"""Splitting merged attention heads and merging them back ([B, L, H*D] <-> [B, H, L, D])."""

from __future__ import annotations

from torch import Tensor


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, L, H*D] -> [B, H, L, D]"""
    b, length, width = x.shape
    return x.view(b, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, D] -> [B, L, H*D]"""
    b, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * dim)
