"""One attn2 layer alone at SDXL 1024 x 1024 shapes: ComfyUI's attention vs the nested patch's work."""

from __future__ import annotations

import argparse

import comfy.model_management as mm
import torch
from comfy.ldm.modules.attention import optimized_attention

from nested_attention.nested_core.attention import NestedSubject, TokenPositions, nested_attention, prepare_picks
from nested_dev.kernel_count import KernelCount

from .memory import TensorWatch, clock


def layer_table(args: argparse.Namespace) -> list[str]:
    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    dtype = args.dtype
    rows = [
        "",
        f"One attn2 layer at SDXL 1024x1024 shapes, batch 2 (cond + uncond, the subjects in cond), context 77, "
        f"{str(dtype).replace('torch.', '')} (positions prepared once, as in a sampling run)",
        "",
        "| queries | heads x 64 | nested tokens | subjects | plain (ms) | nested (ms) | ratio | extra kernels | "
        "largest tensor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for queries, heads in ((4096, 10), (1024, 20)):
        width = heads * 64
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, n, width, generator=gen).to(device, dtype) for n in (queries, 77, 77))
        for tokens in args.tokens:
            for count in (1, 4):
                subjects = [
                    NestedSubject(
                        torch.randn(1, tokens, width, generator=gen).to(device, dtype),
                        torch.randn(1, tokens, width, generator=gen).to(device, dtype),
                        TokenPositions.from_lists([[5 + 3 * i], []], device),
                    )
                    for i in range(count)
                ]
                picks = prepare_picks([s.positions for s in subjects], 77, heads, 64, dtype, device)

                def plain(q=q, k=k, v=v, heads=heads):
                    return optimized_attention(q, k, v, heads)

                def nested(q=q, k=k, v=v, heads=heads, subjects=subjects, picks=picks):
                    base = optimized_attention(q, k, v, heads)
                    return nested_attention(q, k, v, heads, subjects, base=base, picks=picks, inplace=True)

                plain_ms, nested_ms = _interleaved(plain, nested, args.rounds * args.repeats, cuda)
                watch, kernels, reference = TensorWatch(), KernelCount(), KernelCount()
                with torch.inference_mode():
                    with watch:
                        nested()
                    with kernels:
                        nested()
                    with reference:
                        plain()
                rows.append(
                    f"| {queries} | {heads} | {tokens} | {count} | {plain_ms:.2f} | {nested_ms:.2f} | "
                    f"{nested_ms / plain_ms:.2f} | {kernels.total - reference.total} | {list(watch.largest[1])} |"
                )
    return rows


def _interleaved(a, b, repeats: int, cuda: bool) -> tuple[float, float]:
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        a(), b()
        for _ in range(repeats):
            for index, fn in enumerate((a, b)):
                start = clock(cuda)
                fn()
                times[index].append(clock(cuda) - start)
    return 1000 * min(times[0]), 1000 * min(times[1])
