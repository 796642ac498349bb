"""Clocks and memory watches that work the same on the CPU and on a GPU."""

from __future__ import annotations

import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def clock(cuda: bool) -> float:
    """Wall time on the GPU (after a sync); on the CPU, this process's CPU time, which other
    programs on a shared machine disturb far less than wall time."""
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class TensorWatch(TorchDispatchMode):
    """Peak bytes of tensors created and alive during the block, and the largest single tensor
    (on a GPU, ``cuda_peak`` reads the allocator instead)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest: tuple[int, tuple] = (0, ())
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # outputs that share an input's storage are views or in-place results, not allocations
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or key == 0:
            return
        size = storage.nbytes()
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        if t.numel() > self.largest[0]:
            self.largest = (t.numel(), tuple(t.shape))
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size
