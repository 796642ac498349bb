"""Counting what a piece of PyTorch code asks the device to do: kernels, and waits for the host.

``KernelCount`` is a ``TorchDispatchMode``: it sees every ATen operation that reaches a backend,
after PyTorch's own decompositions, and counts those that launch work (views, reshapes of
metadata and other aliasing operations do not). It also notes host synchronisations: operations
that read a tensor's value on the host (``.item()``, ``float(t)``, ``.tolist()``, ``if t:``) or
whose output shape depends on data (``nonzero``, ``masked_select``, ``unique``), and copies
between devices. One fused kernel (scaled_dot_product_attention) counts once, as one launch
(on a GPU a fused attention may be one to three kernels: the same for the patched and unpatched
model, so ratios hold).
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Operations that only make a new view of the same memory (no kernel).
VIEWS = frozenset(
    {
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "transpose",
        "permute",
        "expand",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "t",
        "as_strided",
        "alias",
        "detach",
        "split",
        "split_with_sizes",
        "narrow",
        "unbind",
        "lift_fresh",
        "view_as_real",
        "view_as_complex",
        "_nested_view_from_buffer",
    }
)
#: Operations that make the host wait for the device (or need the data to know their output size).
SYNCS = frozenset(
    {
        "_local_scalar_dense",
        "item",
        "nonzero",
        "nonzero_static",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "equal",
        "is_nonzero",
        "_assert_async",
    }
)


class KernelCount(TorchDispatchMode):
    """Counts kernels (``total``, per operation in ``ops``) and host syncs (``syncs``) while active;
    ``pause()`` stops counting, e.g. during a part of the code measured separately."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.syncs: list[str] = []
        self.paused = 0

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        name = func.overloadpacket.__name__
        if name in SYNCS or (name in ("_to_copy", "copy_") and _crosses_devices(func, args, kwargs, out)):
            self.syncs.append(name)
        if name not in VIEWS:
            self.ops[name] += 1
        return out

    def pause(self) -> "_Paused":
        return _Paused(self)


class _Paused:
    def __init__(self, counter: KernelCount) -> None:
        self.counter = counter

    def __enter__(self) -> None:
        self.counter.paused += 1

    def __exit__(self, *exc: Any) -> None:
        self.counter.paused -= 1


def _crosses_devices(func: Any, args: tuple, kwargs: Any, out: Any) -> bool:
    """A copy between a CPU tensor and a device tensor (either way)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if isinstance(out, torch.Tensor):
        tensors.append(out)
    return len({t.device.type for t in tensors}) > 1
