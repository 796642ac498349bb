"""Show what the adapter loader recognises in a file, or why it refuses it, then list its tensors.

    python -m nested_core.inspect some_adapter.safetensors

Exits 0 when the file would load as a nested adapter, 2 when it would not. Run it from the pack's
folder; paste its output into an issue when a release's file is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .checkpoint import AdapterCheckpoint, load_adapter_checkpoint
from .checkpoint.reader import RawCheckpoint, read_checkpoint
from .errors import AdapterFileError

log = logging.getLogger("nested_core.inspect")
_MAX_METADATA_CHARS = 200


def report(path: str, heads: Optional[int] = None) -> tuple[list[str], bool]:
    """The lines of the report on ``path`` and whether the file loads."""
    lines = [f"file: {path}"]
    try:
        raw = read_checkpoint(path)
    except AdapterFileError as error:
        return lines + ["loads: no (the file cannot be read)", *_refusal(error)], False
    lines.append(f"container: {raw.container}, {len(raw.info)} tensors")
    try:
        checkpoint = load_adapter_checkpoint(path, heads=heads)
    except AdapterFileError as error:
        lines += ["loads: no", *_refusal(error)]
        loads = False
    else:
        lines += ["loads: yes", *_recognised(checkpoint)]
        loads = True
    return lines + _metadata(raw) + _tensors(raw), loads


def _refusal(error: AdapterFileError) -> list[str]:
    lines = [f"  found: {error.found}", f"  expected: {error.expected}"]
    return lines + ([f"  hint: {error.hint}"] if error.hint else [])


def _recognised(checkpoint: AdapterCheckpoint) -> list[str]:
    config = checkpoint.config
    q = config.qformer
    lines = [f"format: {checkpoint.format}", "tensor groups:"]
    lines += [f"  {group}" for group in checkpoint.groups]
    lines.append(
        f"resampler: {q.num_queries} tokens, width {q.dim}, depth {q.depth}, {q.heads} heads x head width "
        f"{q.head_dim}, feed-forward x{q.ff_mult}, in {q.in_dim} (CLIP vision width), out {q.out_dim} (context width)"
    )
    lines += ["how it was read:"] + [f"  {note}" for note in checkpoint.notes]
    lines.append(f"layers: {len(config.layer_dims)}, widths {_runs(config.layer_dims)}")
    lines.append("layer order (diffusers processor order: down blocks, up blocks, mid block):")
    lines += [f"  layer {i} <- {source}" for i, source in enumerate(checkpoint.layer_sources)]
    if config.layer_keys is None:
        lines.append("  (no layer ids: the adapter fits a model with exactly these layers in diffusers order)")
    return lines


def _metadata(raw: RawCheckpoint) -> list[str]:
    if not raw.metadata:
        return []
    lines = ["metadata:"]
    for key, value in sorted(raw.metadata.items()):
        shown = value if len(value) <= _MAX_METADATA_CHARS else value[:_MAX_METADATA_CHARS] + "..."
        lines.append(f"  {key} = {shown!r}")
    return lines


def _tensors(raw: RawCheckpoint) -> list[str]:
    width = max((len(name) for name in raw.info), default=0)
    lines = [f"tensors ({len(raw.info)}):"]
    for name, info in raw.info.items():
        dtype = str(info.dtype).removeprefix("torch.")
        lines.append(f"  {name:<{width}}  {list(info.shape)!s:<16}  {dtype}")
    return lines


def _runs(values: Sequence[int]) -> str:
    """(640, 640, 1280) -> '640 x2, 1280'"""
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ", ".join(f"{value} x{count}" if count > 1 else str(value) for value, count in runs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nested_core.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="an adapter file (.safetensors, .bin, .pt), any name")
    parser.add_argument(
        "--heads", type=int, help="the resampler's head count, for files recognised by structure that do not state it"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    lines, loads = report(args.file, args.heads)
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # "... | head": the reader has seen enough
        sys.stdout = open(os.devnull, "w")
    return 0 if loads else 2


if __name__ == "__main__":
    sys.exit(main())
