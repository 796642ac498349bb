"""The trainer's command line on the tiny stand-ins: ``python -m nested_dev.tiny_train sd15 --config run.json``.

What ``python -m nested_train`` does, with the frozen parts built by ``tiny_models.TinyParts``
instead of read from checkpoint files (the multi-process test runs it under torchrun).
"""

from __future__ import annotations

import sys

from nested_attention.nested_train.cli import main


def tiny_parts(kind: str):
    def build():
        from .tiny_models import TinyParts  # imports ComfyUI, which main() has prepared by now

        return TinyParts(kind)

    return build


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    sys.exit(main(rest, frozen=tiny_parts(kind)))
