"""The per-layer key/value projection pairs of an adapter file, and the order of their layers.

A pair is two weights named alike except for one word that says key or value (``to_k_ip`` /
``to_v_ip``, ``k_proj`` / ``v_proj``, ``key`` / ``value``). The layer of a pair is named either by
diffusers' attention-processor path (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``),
which gives diffusers' order directly (down blocks, up blocks, mid block; then block, attention and
transformer block ascending), or by one index (``ip_adapter.{n}``, ``layers.{i}``) numbered 0, 1, 2,
... or 1, 2, 3, ... or 1, 3, 5, ... (IP-Adapter's 2i+1). Names that fit none of these, or fit two
readings, are refused with what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import AdapterFileError
from .names import is_index
from .reader import RawCheckpoint

KEY_WORDS = {"k", "key", "keys", "wk"}
VALUE_WORDS = {"v", "value", "values", "wv"}
PLACEHOLDER = "{k,v}"
EXPECTED = (
    "one key/value projection pair per cross-attention layer, named alike except for a word that says which "
    "(to_k/to_v, k_proj/v_proj, key/value), by layer index or diffusers processor name"
)
_TOKENS = re.compile(r"([._])")
_DIFFUSERS = re.compile(
    r"(?:^|\.)(down_blocks|up_blocks|mid_block)\.(?:(\d{1,9})\.)?attentions\.(\d{1,9})\."
    r"transformer_blocks\.(\d{1,9})\.(attn\d*)(?:\.processor)?(?=\.|$)"
)
_RANK = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
#: ((down/up/mid rank, block, attention, transformer block), processor path, attention name)
_Address = tuple[tuple[int, int, int, int], str, str]


@dataclass(frozen=True)
class LayerPair:
    """The key and value weights of one layer and where they were found."""

    source: str  # "ip_adapter.1", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    key: str
    value: str


@dataclass(frozen=True)
class Pairs:
    """The layers in diffusers order and how their order was read."""

    layers: tuple[LayerPair, ...]
    order: str  # "by diffusers names" or "by index"
    naming: str  # e.g. "'ip_adapter.{n}.to_{k,v}_ip.weight', numbered 1, 3, 5, ... (IP-Adapter's 2i+1)"


def read_pairs(raw: RawCheckpoint, names: Iterable[str], hint: str) -> Pairs:
    """Pair the given tensors into layers and order them; AdapterFileError when they do not pair up uniquely."""
    names = sorted(names)
    if not names:
        raise AdapterFileError(raw.path, "a resampler but no per-layer key/value projections beside it", EXPECTED, hint)
    biases = [n for n in names if n.endswith(".bias")]
    if biases:
        raise AdapterFileError(
            raw.path, f"biases beside the resampler ({_listing(biases)})", f"{EXPECTED}, without biases", hint
        )
    stems: dict[str, dict[str, str]] = {}
    unpaired = []
    for name in names:
        stem, role = _stem(name)
        if stem is None or role is None or not name.endswith(".weight"):
            unpaired.append(name)
        elif role in stems.setdefault(stem, {}):
            twice = f"'{stems[stem][role]}' and '{name}'"
            raise AdapterFileError(raw.path, f"two {role} projections for one layer: {twice}", EXPECTED, hint)
        else:
            stems[stem][role] = name
    if unpaired:
        raise AdapterFileError(raw.path, _unpaired(unpaired), EXPECTED, hint)
    lone = [next(iter(found.values())) for found in stems.values() if len(found) == 1]
    if lone:
        raise AdapterFileError(raw.path, f"projections without their partner: {_listing(lone)}", EXPECTED, hint)

    addresses = {stem: address for stem in stems if (address := _diffusers_address(stem)) is not None}
    if len(addresses) == len(stems):
        return _by_diffusers_names(raw, stems, addresses, hint)
    if addresses:
        named = next(iter(addresses))
        other = next(s for s in stems if s not in addresses)
        raise AdapterFileError(
            raw.path, f"pairs named two ways ('{named}' and '{other}')", "one naming for all layers", hint
        )
    return _by_index(raw, stems, hint)


def _stem(name: str) -> tuple[Optional[str], Optional[str]]:
    """'a.1.to_k_ip.weight' -> ('a.1.to_{k,v}_ip.weight', 'key'); (None, None) without exactly one key/value word."""
    pieces = _TOKENS.split(name)
    hits = [i for i in range(0, len(pieces), 2) if pieces[i].lower() in KEY_WORDS | VALUE_WORDS]
    if len(hits) != 1:
        return None, None
    role = "key" if pieces[hits[0]].lower() in KEY_WORDS else "value"
    pieces[hits[0]] = PLACEHOLDER
    return "".join(pieces), role


def _diffusers_address(stem: str) -> "_Address | None":
    """((rank, block, attention, transformer block), processor path, attn name) of a diffusers processor name."""
    match = _DIFFUSERS.search(stem)
    if match is None:
        return None
    kind, block, attention, transformer, attn = match.groups()
    if (block is None) != (kind == "mid_block"):
        return None
    address = (_RANK[kind], int(block or 0), int(attention), int(transformer))
    return address, stem[match.start() : match.end()].lstrip("."), attn


def _by_diffusers_names(
    raw: RawCheckpoint, stems: dict[str, dict[str, str]], addresses: dict[str, _Address], hint: str
) -> Pairs:
    attns = sorted({attn for _, _, attn in addresses.values()})
    if attns != ["attn2"]:
        raise AdapterFileError(
            raw.path,
            f"processor weights on {', '.join(attns)}",
            "weights on the cross-attention processors ('attn2') only",
            hint,
        )
    seen: dict[tuple[int, int, int, int], str] = {}
    for stem, (address, _, _) in addresses.items():
        if address in seen:
            raise AdapterFileError(
                raw.path,
                f"two pairs for one layer: '{seen[address]}' and '{stem}' (several adapters in one file?)",
                "one key/value pair per cross-attention layer",
                hint,
            )
        seen[address] = stem
    ordered = sorted(stems, key=lambda stem: addresses[stem][0])
    layers = tuple(
        LayerPair(_source(stem, addresses[stem][1]), stems[stem]["key"], stems[stem]["value"]) for stem in ordered
    )
    return Pairs(layers, "by diffusers names", f"'{ordered[0]}', ... (diffusers processor names)")


def _by_index(raw: RawCheckpoint, stems: dict[str, dict[str, str]], hint: str) -> Pairs:
    templates: dict[str, list[str]] = {}
    for stem in stems:
        templates.setdefault(_template(stem), []).append(stem)
    if len(templates) > 1:
        groups = ", ".join(f"'{t}' ({len(s)} pair{'s' * (len(s) > 1)})" for t, s in sorted(templates.items()))
        raise AdapterFileError(
            raw.path, f"several groups of key/value pairs: {groups}", "one group, one pair per layer", hint
        )
    split = {stem: stem.split(".") for stem in stems}
    positions = [i for i, part in enumerate(next(iter(split.values()))) if is_index(part)]
    varying = [i for i in positions if len({parts[i] for parts in split.values()}) > 1]
    if len(varying) > 1:
        raise AdapterFileError(
            raw.path,
            f"pairs numbered by {len(varying)} indices (e.g. '{next(iter(stems))}'): their layer order is not known",
            "pairs numbered by one layer index, or named by diffusers processor names",
            hint,
        )
    if not varying:  # a single layer
        stem = next(iter(stems))
        return Pairs((LayerPair(_source(stem), stems[stem]["key"], stems[stem]["value"]),), "by index", f"'{stem}'")
    at = varying[0]
    ordered = sorted(stems, key=lambda stem: int(split[stem][at]))
    numbers = [int(split[stem][at]) for stem in ordered]
    count = len(numbers)
    conventions = {
        "0, 1, 2, ...": list(range(count)),
        "1, 2, 3, ...": list(range(1, count + 1)),
        "1, 3, 5, ... (IP-Adapter's 2i+1)": [2 * i + 1 for i in range(count)],
    }
    numbering = next((text for text, expected in conventions.items() if numbers == expected), None)
    if numbering is None:
        shown = ", ".join(map(str, numbers[:8])) + (", ..." if count > 8 else "")
        raise AdapterFileError(
            raw.path,
            f"{count} key/value pairs numbered {shown}",
            "layers numbered 0, 1, 2, ... or 1, 2, 3, ... or 1, 3, 5, ... without gaps",
            hint,
        )
    parts = split[ordered[0]]
    naming = ".".join(parts[:at] + ["{n}"] + parts[at + 1 :])
    layers = tuple(
        LayerPair(_source(stem, ".".join(split[stem][: at + 1])), stems[stem]["key"], stems[stem]["value"])
        for stem in ordered
    )
    return Pairs(layers, "by index", f"'{naming}', numbered {numbering}")


def _template(stem: str) -> str:
    return ".".join("#" if is_index(part) else part for part in stem.split("."))


def _source(stem: str, address: str = "") -> str:
    """The layer's name for reports: the path before the key/value word when it holds the layer's address."""
    before = stem.split(PLACEHOLDER)[0].rpartition(".")[0]
    return before if address and address in before else stem


def _unpaired(names: list[str]) -> str:
    """Say why tensors could not be paired, naming the two readings when there are two."""
    split = {name: name.split(".") for name in names}
    for i, a in enumerate(names[:200]):
        for b in names[i + 1 : 200]:
            pa, pb = split[a], split[b]
            differ = [k for k in range(len(pa)) if pa[k] != pb[k]] if len(pa) == len(pb) else []
            if len(differ) == 1 and not (is_index(pa[differ[0]]) or is_index(pb[differ[0]])):
                k = differ[0]
                return (
                    f"projections that cannot be told apart as keys and values: '{a}' and '{b}' differ only in "
                    f"'{pa[k]}' / '{pb[k]}', neither a key/value word"
                )
    templates = {_template(name) for name in names}
    if len(templates) == 1 and len(names) % 2 == 0 and "#" in next(iter(templates)):
        half = len(names) // 2
        return (
            f"{len(names)} projections '{next(iter(templates))}' with no word for key or value: they could be "
            f"{half} pairs taken in turn (key, value, key, ...) or {half} keys followed by {half} values"
        )
    return f"{len(names)} tensor(s) that are neither the resampler nor key/value pairs: {_listing(names)}"


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
