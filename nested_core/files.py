"""Writing files so that they appear complete or not at all."""

from __future__ import annotations

import os
from typing import Callable


def write_atomically(path: "str | os.PathLike[str]", write: Callable[[str], None]) -> None:
    """``write(partial)`` writes the file to a side path, which is then renamed onto ``path``: a crash or
    a full disk leaves the previous file (or none), never half of one."""
    path = os.fspath(path)
    partial = path + ".partial"
    write(partial)
    os.replace(partial, path)
