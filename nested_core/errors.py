"""The pack's exception types: every message names the input, what was found and what was expected."""

from __future__ import annotations

import os
from typing import Optional


class NestedAttentionError(ValueError):
    """A user-facing problem with an input of the Nested Attention pack (file, node input, prompt)."""


class AdapterFileError(NestedAttentionError):
    """An adapter or subject file that cannot be used: unreadable, corrupted, or of an unknown layout.

    The message always names the file, what was found in it and what was expected, so a user can
    tell a truncated download from a file meant for another model.
    """

    def __init__(self, path: "str | os.PathLike[str]", found: str, expected: str, hint: Optional[str] = None):
        self.path = os.fspath(path)
        self.found = found
        self.expected = expected
        self.hint = hint
        message = f"{os.path.basename(self.path)}: found {found}; expected {expected}."
        if hint:
            message += f" {hint}"
        message += f" (file: {self.path})"
        super().__init__(message)
