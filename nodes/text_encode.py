"""Encoding a prompt the way CLIP Text Encode does, with its token ids recorded for the subjects."""

from __future__ import annotations

from typing import Any

from ..nested_core.errors import NestedAttentionError
from .contract import PROMPT_KEY
from .tokens import prompt_tokens


def encode_prompt(clip: Any, text: str) -> list:
    """ComfyUI CONDITIONING for ``text``, each entry carrying the prompt's token ids (``PROMPT_KEY``)
    so the sampling wrappers find every subject's word in it."""
    if clip is None:
        raise NestedAttentionError(
            "Nested Text Encode: the clip input is empty; the checkpoint loader that "
            "feeds it found no text encoder in its file"
        )
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens, add_dict={PROMPT_KEY: prompt_tokens(tokens, text)})
