"""Feed hundreds of mutated adapter files to the loader: each loads cleanly or raises AdapterFileError.

The sources cover every path of the loader: native, IP-Adapter-Plus (safetensors and pickle) and two
files recognised by structure.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile

import pytest
import torch
from core_factories import (
    IPA_QFORMER,
    TINY_QFORMER,
    nest,
    processor_name,
    random_adapter,
    renamed_state,
    write_ip_adapter,
)
from safetensors.torch import save_file

from nested_attention.nested_core import AdapterFileError, LayerKey, build_adapter, load_adapter_checkpoint, save_native

MUTANTS_PER_SOURCE = 80


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def mutate_header(data: bytes, rng: random.Random) -> bytes:
    """Structured edits of a safetensors header: shapes, dtypes, names, offsets, metadata."""
    header, body = split_safetensors(data)
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.randrange(7)
    if kind == 0 and entry["shape"]:
        entry["shape"][rng.randrange(len(entry["shape"]))] += rng.choice([-1, 1, 7])
    elif kind == 1:
        entry["dtype"] = rng.choice(["I32", "U8", "BOOL", "F64", "XYZ", "F8_E4M3"])
    elif kind == 2:
        header[name + rng.choice(["_x", ".extra", ""]) + "y"] = header.pop(name)
    elif kind == 3:
        del header[name]
    elif kind == 4:
        entry["data_offsets"][1] += rng.choice([-4, 4, 10**9])
    elif kind == 5:
        meta = header.setdefault("__metadata__", {})
        key = rng.choice(["format", "format_version", "qformer", "layer_order", "num_tokens", "context_dim", "heads"])
        meta[key] = rng.choice(
            ["", "x", "-1", "99", "[]", "{}", '{"dim": -3}', '["input.9.9"]', "null", "²", "٣", "1²", '{"heads": 3}']
        )
    else:
        entry["shape"] = []
    return join_safetensors(header, body)


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """Edit one member of a PyTorch zip file (or drop it)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    members = source.namelist()
    victim = rng.choice(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for member in members:
            content = source.read(member)
            if member == victim:
                choice = rng.randrange(3)
                if choice == 0:
                    continue
                if choice == 1:
                    content = content[: rng.randrange(len(content) + 1)]
                else:
                    content = bytes(b ^ 0xFF if rng.random() < 0.05 else b for b in content)
            target.writestr(member, content)
    return out.getvalue()


def mutate(data: bytes, rng: random.Random, container: str) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # truncated download
        return data[: rng.randrange(len(data))]
    if kind == 1:  # random flipped bytes anywhere
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 2:  # damage near the start (headers)
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(min(len(out), 300))] = rng.randrange(256)
        return bytes(out)
    if kind == 3:  # garbage appended or prepended
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        return junk + data if rng.random() < 0.5 else data + junk
    if container == "safetensors":
        return mutate_header(data, rng)
    if container == "zip":
        return mutate_zip(data, rng)
    return data[:8] + bytes(rng.randrange(256) for _ in range(64))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    native = random_adapter(
        TINY_QFORMER, layer_dims=(32, 64), layer_keys=(LayerKey("input", 1, 0), LayerKey("middle", 0, 0))
    )
    save_native(folder / "native.safetensors", native.config, native.state_dict())
    ipa = random_adapter(IPA_QFORMER, layer_dims=(64, 32))
    write_ip_adapter(folder / "ipa.safetensors", ipa, "safetensors")
    write_ip_adapter(folder / "ipa.bin", ipa, "torch")
    # recognised by structure: renamed resampler with separate to_k/to_v, diffusers processor names
    renamed = renamed_state(ipa, "resampler", "attn-ff", processor_name)
    save_file({k: v.half().contiguous() for k, v in renamed.items()}, folder / "structure.safetensors")
    # ... and diffusers' resampler naming with indexed pairs, in a {"state_dict": ...}-wrapped pickle
    indexed = renamed_state(ipa, "image_proj_model", "diffusers", lambda i, r: f"adapter_modules.{i}.to_{r}.weight")
    torch.save({"state_dict": nest(indexed)}, folder / "wrapped.bin")
    return [
        (folder / "native.safetensors", "safetensors"),
        (folder / "ipa.safetensors", "safetensors"),
        (folder / "ipa.bin", "zip"),
        (folder / "structure.safetensors", "safetensors"),
        (folder / "wrapped.bin", "zip"),
    ]


def test_every_mutant_loads_cleanly_or_raises_adapter_file_error(sources, tmp_path):
    refused = loaded = 0
    for source_index, (source, container) in enumerate(sources):
        data = source.read_bytes()
        for i in range(MUTANTS_PER_SOURCE):
            rng = random.Random(1000 * source_index + i)
            path = tmp_path / f"mutant_{source_index}_{i}{rng.choice(['.safetensors', '.bin', '', '.pt'])}"
            path.write_bytes(mutate(data, rng, container))
            try:
                checkpoint = load_adapter_checkpoint(path)
            except AdapterFileError as error:
                assert path.name in str(error) and "found" in str(error) and "expected" in str(error)
                refused += 1
                continue
            adapter = build_adapter(checkpoint.config, checkpoint.state_dict).float()  # as the nodes run it
            tokens = adapter.encode(torch.randn(1, 5, checkpoint.config.clip_vision_width))
            assert torch.isfinite(tokens).all()
            loaded += 1
    assert refused + loaded == len(sources) * MUTANTS_PER_SOURCE >= 200
    assert refused >= 0.6 * (refused + loaded), (refused, loaded)
