"""Finding a Perceiver resampler among a file's tensors by its structure, whatever its names.

A resampler (IP-Adapter-Plus's ``image_proj``, diffusers' ``IPAdapterPlusImageProjection``, a
renamed copy of either) is, under some prefix P:

* learned latents ``[1, N, d]`` or ``[N, d]``;
* an input projection ``[d, E]`` and an output projection ``[C, d]``, both with bias, and an output
  LayerNorm ``[C]``;
* ``depth`` numbered blocks ``P.<container>.{j}``, each an attention (two LayerNorms ``[d]``, to_q
  ``[h, d]``, to_kv ``[2h, d]`` or to_k and to_v ``[h, d]``, to_out ``[d, h]``, no biases) and a
  feed-forward (LayerNorm ``[d]``, Linear ``[f, d]``, GELU, Linear ``[d, f]``).

Shapes decide most roles. Where they cannot (to_q, to_k, to_v and to_out are all ``[d, d]`` when
h = d; the three LayerNorms are alike) the part of the block a module sits in (attention or
feed-forward), the words of its name (``q``, ``kv``, ``out``, ``latents``) and the order of numbered
names (norm1 before norm2, ff.1 before ff.3) decide. Readings that stay equally good are refused as
ambiguous, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Iterator, Mapping

from .names import Module, components, is_index, join, modules_of, parent, pattern, relative, shape_text, under, words
from .reader import TensorInfo

FUSED_ROLES = ("to_q", "to_kv", "to_out", "ff_in", "ff_out")
SPLIT_ROLES = ("to_q", "to_k", "to_v", "to_out", "ff_in", "ff_out")
NORM_ROLES = ("norm1", "norm2", "ff_norm")
ATTENTION_ROLES = ("to_q", "to_kv", "to_k", "to_v", "to_out")
#: Words that name a role; a reading scores one point per module whose name has a word of its role.
CUES = {
    "to_q": {"q", "query", "wq"},
    "to_kv": {"kv"},
    "to_k": {"k", "key", "wk"},
    "to_v": {"v", "value", "wv"},
    "to_out": {"out", "o", "wo", "output"},
    "ff_in": {"up", "in"},
    "ff_out": {"down"},
    "norm1": {"media", "x", "feat", "features", "image", "context", "visual"},
    "norm2": {"latents", "latent", "lat", "queries", "query"},
    "ff_norm": {"ff", "ffn", "mlp", "feedforward"},
    "proj_in": {"in", "input"},
    "proj_out": {"out", "output"},
    "norm_out": {"out", "output", "final", "post"},
}
_LATENT_WORDS = {"latents", "latent", "queries", "query", "learnable"}


class NotAResampler(Exception):
    """A group that cannot be read as a resampler; the text says why. ``close`` when it has the latents and
    blocks of the right make-up (then the reason is worth a refusal of its own), not when it merely has
    numbered blocks beside a tensor of rank 3 (a ViT's position embedding and blocks, say)."""

    def __init__(self, reason: str, close: bool = True):
        super().__init__(reason)
        self.close = close


@dataclass(frozen=True, eq=False)
class Resampler:
    """A recognised resampler: where its tensors are and the widths read off their shapes."""

    prefix: str  # "resampler"; "" at the top level
    container: str  # "layers": block j is prefix.container.j
    latents: Module
    outer: Mapping[str, Module]  # proj_in, proj_out, norm_out
    blocks: tuple[Mapping[str, Module], ...]  # per block: role -> module
    roles: Mapping[str, str]  # role -> module path inside a block ("attn.to_q")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_queries(self) -> int:
        return self.latents.shape[-2]

    @property
    def dim(self) -> int:
        return self.latents.shape[-1]

    @property
    def in_dim(self) -> int:
        return self.outer["proj_in"].shape[1]

    @property
    def out_dim(self) -> int:
        return self.outer["proj_out"].shape[0]

    @property
    def inner(self) -> int:
        """heads x head width of the attention"""
        return self.blocks[0]["to_q"].shape[0]

    @property
    def hidden(self) -> int:
        """width of the feed-forward"""
        return self.blocks[0]["ff_in"].shape[0]

    @property
    def fused_kv(self) -> bool:
        return "to_kv" in self.roles

    @property
    def to_names(self) -> bool:
        """Projections named to_q / to_kv (or to_k, to_v) / to_out, as IP-Adapter and diffusers name them."""
        return all(role in components(path) for role, path in self.roles.items() if role in ATTENTION_ROLES)

    @property
    def tensors(self) -> frozenset[str]:
        modules = [self.latents, *self.outer.values()] + [m for block in self.blocks for m in block.values()]
        return frozenset(name for m in modules for name in m.tensors)

    def describe(self) -> str:
        """'resampler.*': latents, blocks and how their modules are named."""
        roles = ", ".join(f"{role}='{path}'" for role, path in self.roles.items())
        outer = ", ".join(f"{role}='{relative(m.path, self.prefix)}'" for role, m in self.outer.items())
        return (
            f"resampler {pattern(self.prefix)}: latents '{self.latents.path}' {shape_text(self.latents.shape)}, "
            f"{outer}; {self.depth} block(s) '{join(self.prefix, self.container)}.{{j}}' with {roles}"
        )


@dataclass(frozen=True)
class Miss:
    """A resampler-like group that could not be read: how many tensors it holds and why."""

    size: int
    reason: str
    close: bool  # see NotAResampler


def find_resamplers(info: Mapping[str, TensorInfo]) -> tuple[list[Resampler], list[Miss]]:
    """Every group of tensors that reads as a resampler, and the near misses (for messages)."""
    modules = modules_of(info)
    by_prefix: dict[str, list[Module]] = {}
    for module in modules.values():
        if _could_be_latents(module):
            by_prefix.setdefault(parent(module.path), []).append(module)
    found: list[Resampler] = []
    misses: list[Miss] = []
    for prefix, latents in sorted(by_prefix.items()):
        inside = {path: m for path, m in modules.items() if under(path, prefix)}
        for container, blocks in _containers(inside, prefix, misses):
            try:
                found.append(_read_group(prefix, latents, container, blocks, inside))
            except NotAResampler as miss:
                size = sum(len(m.tensors) for block in blocks for m in block.values())
                misses.append(Miss(size, str(miss), miss.close))
    return found, misses


def _could_be_latents(module: Module) -> bool:
    """Learned queries: [1, N, d] (any name), or [N, d] named like latents/queries; never with a bias."""
    shape = module.shape
    if module.weight is None or module.bias is not None or min(shape, default=0) <= 0:
        return False
    if len(shape) == 3:
        return shape[0] == 1
    name = relative(module.path, parent(module.path))
    return len(shape) == 2 and bool(set(words(name)) & _LATENT_WORDS)


def _containers(
    inside: Mapping[str, Module], prefix: str, misses: list[Miss]
) -> Iterator[tuple[str, list[dict[str, Module]]]]:
    """(container, blocks) for every path under ``prefix`` followed by indices 0, 1, ... (a ModuleList)."""
    found: dict[str, dict[int, dict[str, Module]]] = {}
    for path, module in inside.items():
        parts = components(relative(path, prefix))
        for k, part in enumerate(parts[:-1]):
            if is_index(part):
                block = found.setdefault(".".join(parts[:k]), {}).setdefault(int(part), {})
                block[".".join(parts[k + 1 :])] = module
    for container, blocks in sorted(found.items()):
        numbers = sorted(blocks)
        if numbers == list(range(len(numbers))):
            yield container, [blocks[j] for j in numbers]
        elif numbers[0] == 0:
            shown = ", ".join(map(str, numbers[:8]))
            reason = f"blocks '{join(prefix, container)}.{{j}}' numbered {shown}: a gap"
            misses.append(Miss(len(blocks), reason, close=False))


def _read_group(
    prefix: str, latents: list[Module], container: str, blocks: list[dict[str, Module]], inside: Mapping[str, Module]
) -> Resampler:
    where = f"'{join(prefix, container)}.{{j}}'"
    readings: list[tuple[Module, dict[str, str]]] = []
    reasons: list[NotAResampler] = []
    for candidate in latents:
        try:
            readings.append((candidate, read_block(blocks[0], candidate.shape[-1], f"block 0 of {where}")))
        except NotAResampler as miss:
            reasons.append(miss)
    if not readings:
        raise reasons[0]
    if len(readings) > 1:
        names = ", ".join(f"'{m.path}' {shape_text(m.shape)}" for m, _ in readings)
        raise NotAResampler(f"several tensors could be the latents of {pattern(prefix)}: {names}")
    latent, roles = readings[0]

    per_block = []
    for j, block in enumerate(blocks):
        if set(block) != set(roles.values()):
            odd = sorted(set(block) ^ set(roles.values()))[:3]
            raise NotAResampler(f"block {j} of {where} differs from block 0 in {', '.join(map(repr, odd))}")
        per_block.append({role: block[path] for role, path in roles.items()})

    claimed = {latent.path} | {m.path for block in per_block for m in block.values()}
    rest = {p: m for p, m in inside.items() if p not in claimed and not under(p, join(prefix, container))}
    outer = _read_outer(rest, prefix, latent.shape[-1])
    return Resampler(prefix, container, latent, outer, tuple(per_block), roles)


def read_block(block: Mapping[str, Module], dim: int, where: str) -> dict[str, str]:
    """role -> module path of one resampler block, from shapes, parts and names; NotAResampler if none or two fit."""
    norms = [p for p, m in block.items() if m.kind == "norm" and m.shape == (dim,)]
    linears = [p for p, m in block.items() if m.kind == "linear"]
    odd = [p for p in block if p not in norms and p not in linears]
    if odd:
        shape = shape_text(block[odd[0]].shape)
        raise NotAResampler(f"{where}: '{odd[0]}' {shape} is neither a LayerNorm [{dim}] nor a linear layer", False)
    if len(norms) != 3 or len(linears) not in (5, 6):
        raise NotAResampler(
            f"{where}: {len(norms)} LayerNorm(s) [{dim}] and {len(linears)} linear layer(s); expected 3 and 5 "
            "(to_q, to_kv, to_out, two feed-forward) or 6 (separate to_k and to_v)",
            close=False,
        )
    with_bias = [p for p in linears if block[p].bias is not None]
    if with_bias:
        raise NotAResampler(
            f"{where}: linear layer '{with_bias[0]}' has a bias; the resampler's block layers have none"
        )
    roles = FUSED_ROLES if len(linears) == 5 else SPLIT_ROLES
    part = _parts(list(block))
    readings: list[tuple[int, dict[str, str]]] = []
    for order in permutations(linears):
        linear = dict(zip(roles, order))
        if not _shapes_fit(linear, block, dim):
            continue
        attention = {part[linear[r]] for r in roles if r in ATTENTION_ROLES}
        ff = {part[linear["ff_in"]], part[linear["ff_out"]]}
        if len(attention) != 1 or len(ff) != 1 or (attention == ff and ff != {""}):
            continue
        a, f = attention.pop(), ff.pop()
        score = _score(linear) + _ordered(linear["ff_in"], linear["ff_out"])
        for norm_order in permutations(norms):
            norm = dict(zip(NORM_ROLES, norm_order))
            ff_part = part[norm["ff_norm"]]
            if (f and ff_part != f) or (not f and a and ff_part == a):
                continue
            if any(part[norm[r]] not in (a, "") or (f and part[norm[r]] == f) for r in ("norm1", "norm2")):
                continue
            readings.append((score + _score(norm) + _ordered(norm["norm1"], norm["norm2"]), {**norm, **linear}))
    if not readings:
        shapes = ", ".join(f"'{p}' {shape_text(block[p].shape)}" for p in linears)
        raise NotAResampler(f"{where}: no reading of the linear layers fits attention and feed-forward ({shapes})")
    best = max(score for score, _ in readings)
    top = [reading for score, reading in readings if score == best]
    if len(top) > 1:
        first, second = (", ".join(f"{r}='{t[r]}'" for r in t if top[0][r] != top[1][r]) for t in top[:2])
        raise NotAResampler(f"{where}: {len(top)} readings of its names fit equally well, e.g. {first} or {second}")
    attention, feed_forward = ("norm1", "norm2", *roles[:-2]), ("ff_norm", *roles[-2:])
    return {role: top[0][role] for role in attention + feed_forward}


def _shapes_fit(linear: Mapping[str, str], block: Mapping[str, Module], dim: int) -> bool:
    q = block[linear["to_q"]].shape
    h = q[0]
    if q[1] != dim or block[linear["to_out"]].shape != (dim, h):
        return False
    if "to_kv" in linear:
        if block[linear["to_kv"]].shape != (2 * h, dim):
            return False
    elif block[linear["to_k"]].shape != (h, dim) or block[linear["to_v"]].shape != (h, dim):
        return False
    f = block[linear["ff_in"]].shape
    return f[1] == dim and block[linear["ff_out"]].shape == (dim, f[0])


def _parts(paths: list[str]) -> dict[str, str]:
    """The sub-module each path sits in (after the parts all share); "" for a module directly in the block."""
    split = [components(p) for p in paths]
    shared = 0
    while all(len(s) > shared + 1 for s in split) and len({s[shared] for s in split}) == 1:
        shared += 1
    return {p: (s[shared] if len(s) > shared + 1 else "") for p, s in zip(paths, split)}


def _score(reading: Mapping[str, str]) -> int:
    return sum(bool(set(words(path)) & CUES[role]) for role, path in reading.items())


def _ordered(first: str, second: str) -> int:
    """1 when the names first differ in a number and ``first``'s is the smaller (norm1/norm2, ff.1/ff.3)."""
    for a, b in zip(words(first), words(second)):
        if a != b:
            return int(a.isdigit() and b.isdigit() and max(len(a), len(b)) <= 9 and int(a) < int(b))
    return 0


def _read_outer(rest: Mapping[str, Module], prefix: str, dim: int) -> dict[str, Module]:
    """proj_in [d, E] and proj_out [C, d] (with biases) and norm_out [C] beside the blocks."""
    linears = [m for m in rest.values() if m.kind == "linear" and m.bias is not None]
    norms = [m for m in rest.values() if m.kind == "norm"]
    readings: list[tuple[int, dict[str, Module]]] = []
    for proj_in in (m for m in linears if m.shape[0] == dim):
        for proj_out in (m for m in linears if m.shape[1] == dim and m is not proj_in):
            for norm_out in (m for m in norms if m.shape == proj_out.shape[:1]):
                reading = {"proj_in": proj_in, "proj_out": proj_out, "norm_out": norm_out}
                score = _score({role: relative(m.path, prefix) for role, m in reading.items()})
                readings.append((score, reading))
    if not readings:
        raise NotAResampler(
            f"no input projection [{dim}, E] and output projection [C, {dim}] (with biases) and LayerNorm [C] "
            f"in {pattern(prefix)}"
        )
    best = max(score for score, _ in readings)
    top = [reading for score, reading in readings if score == best]
    if len(top) > 1:
        differ = "; ".join(
            f"{role}: '{top[0][role].path}' or '{top[1][role].path}'"
            for role in top[0]
            if top[0][role] is not top[1][role]
        )
        raise NotAResampler(f"{len(top)} readings of the projections of {pattern(prefix)} fit equally well ({differ})")
    return top[0]
