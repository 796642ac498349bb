"""Convert an IP-Adapter-Plus file (or any file the loader recognises) into the pack's native adapter format.

    python -m nested_core.convert ip-adapter-plus_sdxl_vit-h.safetensors nested_sdxl.safetensors \
        --class-word person
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Optional, Sequence

import torch

from .checkpoint import load_adapter_checkpoint, save_native
from .errors import NestedAttentionError

log = logging.getLogger("nested_core.convert")
_DTYPES = {"keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def convert(
    source: str,
    destination: str,
    class_word: Optional[str] = None,
    dtype: str = "keep",
    force: bool = False,
    heads: Optional[int] = None,
) -> None:
    """Read ``source`` (any supported layout) and write it as a native adapter to ``destination``.

    ``heads`` is the resampler's head count of a file recognised by structure that does not state it.
    """
    if os.path.abspath(source) == os.path.abspath(destination):
        raise NestedAttentionError("the destination is the source file; choose another name")
    if os.path.exists(destination) and not force:
        raise NestedAttentionError(f"{destination} exists; pass --force to replace it")
    checkpoint = load_adapter_checkpoint(source, heads=heads)
    config = checkpoint.config
    if class_word is not None:
        config = dataclasses.replace(config, class_word=class_word)
    save_native(destination, config, checkpoint.state_dict, _DTYPES[dtype])
    log.info(
        "read %s (%s, %s); wrote native adapter %s: %s",
        source,
        checkpoint.format,
        checkpoint.container,
        destination,
        config.describe(),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nested_core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="an adapter file: native, IP-Adapter-Plus, or one the loader recognises")
    parser.add_argument("destination", help="the native .safetensors file to write")
    parser.add_argument("--class-word", help="the prompt word the adapter's subjects are bound to, e.g. person")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="keep", help="tensor dtype to store")
    parser.add_argument("--force", action="store_true", help="replace the destination if it exists")
    parser.add_argument("--heads", type=int, help="the resampler's head count, when the source does not state it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.source, args.destination, args.class_word, args.dtype, args.force, args.heads)
    except NestedAttentionError as exc:
        log.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
