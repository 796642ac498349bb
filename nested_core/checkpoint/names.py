"""Tensor names read as modules and words: the vocabulary of structural recognition.

A state dict names a layer's tensors ``<module path>.weight`` and ``<module path>.bias``; a bare
parameter (learned latents) is named by its path alone. Recognition by structure groups names into
such modules, then looks at their shapes and at the words of their paths (``attn.to_q`` ->
``attn``, ``to``, ``q``; ``norm1`` -> ``norm``, ``1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from .reader import TensorInfo

_WORD = re.compile(r"[a-z]+|[0-9]+")


@dataclass(frozen=True)
class Module:
    """One layer's weight and optional bias, or a bare parameter (``bare``)."""

    path: str  # "resampler.layers.0.attn.to_q"; a bare parameter's full name
    weight: Optional[str]  # tensor name of the weight (None: an orphan bias)
    bias: Optional[str]
    shape: tuple[int, ...]  # of the weight
    bias_shape: Optional[tuple[int, ...]]
    bare: bool = False

    @property
    def kind(self) -> str:
        """What the module can be: "norm" (1-d weight and bias, as LayerNorm), "linear" (2-d weight),
        "parameter" (bare) or "other"."""
        if self.weight is None or min(self.shape, default=0) <= 0:
            return "other"
        if self.bare:
            return "parameter"
        if len(self.shape) == 1:
            return "norm" if self.bias_shape == self.shape else "other"
        if len(self.shape) == 2 and (self.bias is None or self.bias_shape == self.shape[:1]):
            return "linear"
        return "other"

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(name for name in (self.weight, self.bias) if name is not None)


def modules_of(info: Mapping[str, TensorInfo], names: "Iterable[str] | None" = None) -> dict[str, Module]:
    """Group tensor names into modules by their ``.weight`` / ``.bias`` suffixes."""
    weights: dict[str, str] = {}
    biases: dict[str, str] = {}
    bare: list[str] = []
    for name in info if names is None else names:
        if name.endswith(".weight") or name == "weight":
            weights[name[: -len(".weight")] if name != "weight" else ""] = name
        elif name.endswith(".bias") or name == "bias":
            biases[name[: -len(".bias")] if name != "bias" else ""] = name
        else:
            bare.append(name)
    modules = {}
    for path in sorted(set(weights) | set(biases)):
        weight, bias = weights.get(path), biases.get(path)
        modules[path] = Module(
            path,
            weight,
            bias,
            info[weight].shape if weight else (),
            info[bias].shape if bias else None,
        )
    for name in bare:
        if name in modules:  # both "x" and "x.weight": not a module we can read
            modules[name] = Module(name, None, None, (), None)
        else:
            modules[name] = Module(name, name, None, info[name].shape, None, bare=True)
    return modules


def words(path: str) -> list[str]:
    """Lower-case words and numbers of a path: "attn.to_out.0" -> ["attn", "to", "out", "0"]."""
    return _WORD.findall(path.lower())


def components(path: str) -> list[str]:
    return path.split(".") if path else []


def is_index(component: str) -> bool:
    """A component made of ASCII digits, as ModuleList indices are ("0", "12")."""
    return component.isascii() and component.isdigit() and len(component) <= 9


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def under(path: str, prefix: str) -> bool:
    return not prefix or path.startswith(prefix + ".")


def relative(path: str, prefix: str) -> str:
    return path[len(prefix) + 1 :] if prefix else path


def join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def pattern(prefix: str) -> str:
    """How messages name a group of tensors: 'resampler.*' (or '*' at the top level)."""
    return f"'{prefix}.*'" if prefix else "'*' (top level)"


def shape_text(shape: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
