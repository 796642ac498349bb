"""Finding a subject's token s* in prompts: token ids travel with the conditioning.

``Nested Text Encode`` records the prompt's CLIP token ids, aligned with the context positions
(chunk c, position p -> index 77c + p), under ``contract.PROMPT_KEY`` in every conditioning entry.
The subject's word is resolved to one CLIP token id with the tokenizer bundled with ComfyUI, which
also tokenises prompts when no text encoder is loaded (the trainer checks its captions that way).
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Any

from ..nested_core.errors import NestedAttentionError

NO_TOKEN = -1  # embeddings and other non-id entries


@dataclass(frozen=True)
class PromptTokens:
    """The token ids of one encoded prompt, one per context position."""

    ids: tuple[int, ...]
    text: str

    def occurrences(self, token_id: int) -> list[int]:
        return [i for i, t in enumerate(self.ids) if t == token_id]

    def positions(self, token_id: int, occurrence: int) -> list[int]:
        """Context positions of the token: every occurrence (0) or only the n-th (n >= 1)."""
        found = self.occurrences(token_id)
        if occurrence == 0:
            return found
        return found[occurrence - 1 : occurrence]

    def __deepcopy__(self, memo: dict) -> "PromptTokens":
        return self  # immutable


def prompt_tokens(tokens: dict[str, list], text: str) -> PromptTokens:
    """Flatten ``clip.tokenize`` output (chunks of (id, weight[, word id])) into ids per position.

    SDXL's two tokenizers give the same ids at the same positions (they differ in padding only),
    so the CLIP-L list is used when present.
    """
    key = "l" if "l" in tokens else next(iter(tokens))
    ids = []
    for chunk in tokens[key]:
        for entry in chunk:
            token = entry[0]
            ids.append(int(token) if isinstance(token, numbers.Integral) else NO_TOKEN)
    return PromptTokens(ids=tuple(ids), text=text)


@functools.lru_cache(maxsize=1)
def _sd_tokenizer() -> Any:
    import comfy.sd1_clip

    return comfy.sd1_clip.SDTokenizer()  # the CLIP BPE shared by SD1.5 and both SDXL encoders


def _tokenizer() -> Any:
    return _sd_tokenizer().tokenizer


def tokenize_prompt(text: str) -> PromptTokens:
    """A prompt's token ids as a CLIP text encoder of SD1.5 or SDXL would get them (77-token chunks,
    weights parsed), without a text encoder: what ``clip.tokenize`` gives, for checking prompts early."""
    return prompt_tokens({"l": _sd_tokenizer().tokenize_with_weights(text)}, text)


@functools.lru_cache(maxsize=256)
def resolve_token(word: str) -> int:
    """The single CLIP token id of ``word``; NestedAttentionError when it is not one token."""
    word = word.strip()
    if not word:
        raise NestedAttentionError("token is empty: name the prompt word that stands for the subject, e.g. 'person'")
    tokenizer = _tokenizer()
    ids = tokenizer(word)["input_ids"][1:-1]
    if len(ids) != 1:
        pieces = ", ".join(repr(p.replace("</w>", "")) for p in tokenizer.convert_ids_to_tokens(ids))
        raise NestedAttentionError(
            f"token '{word}' is {len(ids)} CLIP tokens ({pieces}); the subject must be bound to one token. "
            "Use a single common word such as 'person', 'man', 'woman', 'dog' or 'cat' (write it in the "
            "prompt as well), and bind a second subject of the same class with occurrence = 2."
        )
    return ids[0]


def token_text(token_id: int) -> str:
    return _tokenizer().convert_ids_to_tokens([token_id])[0].replace("</w>", "")


def same_token_conflict(a: "tuple[int, int]", b: "tuple[int, int]") -> bool:
    """Two (token id, occurrence) claims overlap when they share a token and an occurrence
    (occurrence 0 claims every occurrence)."""
    return a[0] == b[0] and (a[1] == 0 or b[1] == 0 or a[1] == b[1])


def describe_occurrence(occurrence: int) -> str:
    return "every occurrence" if occurrence == 0 else f"occurrence {occurrence}"


def first_words(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
