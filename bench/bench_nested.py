"""Benchmark: cost of nested attention against the unpatched model, measured in one run.

Two tables, printed as Markdown:

1. One UNet evaluation (cond + uncond batched, subjects in the cond rows) through ComfyUI's real
   sampling path (CFGGuider -> calc_cond_batch -> wrappers -> attn2 patches) on a UNet with SDXL's
   channel widths, head width 64 and context width 2048 but fewer transformer blocks, for 0, 1, 2, 4
   subjects and 16/64/256 nested tokens. Time is the best of shuffled, interleaved rounds (on the
   CPU, this process's CPU time: a busy shared machine only ever adds to it, so the minimum is the
   steadiest estimate);
   FLOPs are counted exactly (matrix products, convolutions, attention kernels); memory is the
   peak of live tensor bytes during the evaluation (CPU) or torch.cuda.max_memory_allocated (GPU).
2. One attn2 layer at SDXL 1024x1024 shapes (4096 and 1024 queries, 10/20 heads of 64): ComfyUI's
   attention alone vs the nested patch.

Every configuration also records the largest tensor any operation created, to show that no
per-query value tensor [B, H, Lq, Lctx, D] is ever allocated.

    ./dev bench            # or: python bench/bench_nested.py --latent 64 --rounds 7
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
import torch.utils.flop_counter as flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nested_dev.comfy_env import load_pack, prepare_comfyui  # noqa: E402

SDXL_WIDTHS = dict(
    model_channels=320,
    channel_mult=[1, 2, 4],
    num_res_blocks=[1, 1, 1],
    transformer_depth=[0, 2, 2],
    transformer_depth_middle=2,
    transformer_depth_output=[0, 0, 2, 2, 2, 2],
    context_dim=2048,
    num_head_channels=64,
    num_heads=-1,
    adm_in_channels=2816,
    num_classes="sequential",
    use_linear_in_transformer=True,
)  # the rest: nested_dev.tiny_models.UNET_COMMON


# PyTorch counts the FLOPs of its GPU attention kernels but not of the CPU flash kernel; same formula.
flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(
    lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v)
)


def clock(cuda: bool) -> float:
    """Wall time on the GPU (after a sync); on the CPU, this process's CPU time, which other
    programs on a shared machine disturb far less than wall time."""
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class TensorWatch(TorchDispatchMode):
    """Peak bytes of tensors created and alive during the block, and the largest single tensor."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest: tuple[int, tuple] = (0, ())
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # outputs that share an input's storage are views or in-place results, not allocations
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or key == 0:
            return
        size = storage.nbytes()
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        if t.numel() > self.largest[0]:
            self.largest = (t.numel(), tuple(t.shape))
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def build_case(pack, model, tokens: int, subjects: int, folder: Path):
    """The model with ``subjects`` subjects of ``tokens`` nested tokens bound (through apply_subject)."""
    core = pack.nested_core
    sites = pack.nodes.model_layers.attn2_sites(model)
    keys = tuple(core.layers.diffusers_order(sites))
    config = core.adapter.AdapterConfig(
        qformer=core.qformer.QFormerConfig(
            num_queries=tokens, dim=64, depth=1, heads=1, head_dim=64, ff_mult=1, in_dim=64, out_dim=2048
        ),
        layer_dims=tuple(sites[k].inner_dim for k in keys),
        layer_keys=keys,
        base_family="sdxl-widths",
    )
    adapter_module = core.adapter.NestedAdapter(config)
    path = folder / f"bench_{tokens}.safetensors"
    if not path.exists():
        core.checkpoint.save_native(path, config, adapter_module.state_dict())
    adapter = pack.nodes.adapter_runtime.load_adapter(str(path))
    words = ["person", "dog", "cat", "woman"]
    for index in range(subjects):
        gen = torch.Generator().manual_seed(index)
        subject = core.subject.SubjectTokens(
            torch.randn(1, tokens, 2048, generator=gen), adapter.fingerprint, 1, "average"
        )
        model = pack.nodes.apply_subject.apply_subject(model, adapter, subject, words[index])
    return model


def conditioning(pack, words: int):
    """cond (with `words` subject words) and uncond, tagged as Nested Text Encode tags them."""
    tokens = pack.nodes.tokens
    ids = [49406] + [320] * 75 + [49407]
    for index, word in enumerate(["person", "dog", "cat", "woman"][:words]):
        ids[5 + 3 * index] = tokens.resolve_token(word)
    gen = torch.Generator().manual_seed(0)

    def entry(tagged: bool):
        extra = {"pooled_output": torch.randn(1, 1280, generator=gen), "width": 1024, "height": 1024}
        if tagged:
            extra[tokens.PROMPT_KEY] = tokens.PromptTokens(tuple(ids), "bench prompt")
        return [[torch.randn(1, 77, 2048, generator=gen), extra]]

    return entry(True), entry(False)


def time_unet(
    model, positive, negative, latent: int, repeats: int, measure: bool
) -> tuple[list[float], TensorWatch, int]:
    """Evaluate the model `repeats` times at one sigma through ComfyUI's sampler path, then, when
    asked, once more under watch for memory and FLOPs."""
    import comfy.sample
    import comfy.samplers

    times: list[float] = []
    watch = TensorWatch()
    flops = [0]

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        model_k(x, sigmas[0] * s_in, **extra_args)  # warm-up, caches filled
        for _ in range(repeats):
            start = clock(x.is_cuda)
            model_k(x, sigmas[0] * s_in, **extra_args)
            times.append(clock(x.is_cuda) - start)
        if not measure:
            return x
        counter = flop_counter.FlopCounterMode(display=False)
        if x.is_cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with counter:
                model_k(x, sigmas[0] * s_in, **extra_args)
            watch.peak = torch.cuda.max_memory_allocated() - base
        else:
            with counter, watch:
                model_k(x, sigmas[0] * s_in, **extra_args)
        flops[0] = counter.get_total_flops()
        return x

    empty = torch.zeros(1, 4, latent, latent)
    sigmas = torch.tensor([5.0, 0.0])
    with torch.inference_mode():
        comfy.sample.sample_custom(
            model,
            torch.randn_like(empty),
            5.0,
            comfy.samplers.KSAMPLER(sampler_function),
            sigmas,
            positive,
            negative,
            empty,
            seed=0,
        )
    return times, watch, flops[0]


def unet_table(pack, args) -> list[str]:
    import comfy.model_management as mm

    from nested_dev import tiny_models

    base = tiny_models.build_unet("sdxl", unet=SDXL_WIDTHS, dtype=args.dtype)
    base.model.to(mm.get_torch_device())
    folder = Path(tempfile.mkdtemp(prefix="nested_bench_"))
    configs = [(0, 0)] + [(n, s) for n in args.tokens for s in (1, 2, 4)]
    models = {c: (base if c == (0, 0) else build_case(pack, base, c[0], c[1], folder)) for c in configs}
    conds = {s: conditioning(pack, s) for s in (0, 1, 2, 4)}
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    watches: dict[tuple, TensorWatch] = {}
    flops: dict[tuple, int] = {}
    order = random.Random(0)
    for round_index in range(args.rounds):  # interleaved, shuffled rounds: noise hits all alike
        for c in order.sample(configs, len(configs)):
            last = round_index == args.rounds - 1
            times, watch, counted = time_unet(models[c], *conds[c[1]], args.latent, args.repeats, measure=last)
            samples[c] += times
            if last:
                watches[c], flops[c] = watch, counted
    plain_time = min(samples[(0, 0)])
    plain_memory = watches[(0, 0)].peak
    sites = len(pack.nodes.model_layers.attn2_sites(base))
    timer = "GPU time" if torch.cuda.is_available() and args.gpu else "CPU time"
    rows = [
        f"UNet with SDXL widths ({sites} attn2 layers), latent {args.latent}x{args.latent} "
        f"(image {8 * args.latent}px), batch cond+uncond, {args.dtype}, best {timer} of "
        f"{len(samples[(0, 0)])} evaluations each",
        "",
        f"| nested tokens | subjects | {timer} (ms) | time ratio | GFLOP | FLOP ratio | peak memory (MiB) | "
        "memory ratio | largest tensor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        best = min(samples[c])
        watch = watches[c]
        rows.append(
            f"| {c[0] or '-'} | {c[1]} | {1000 * best:.0f} | {best / plain_time:.3f} | "
            f"{flops[c] / 1e9:.2f} | {flops[c] / flops[(0, 0)]:.4f} | {watch.peak / 2**20:.1f} | "
            f"{watch.peak / plain_memory:.3f} | {list(watch.largest[1])} |"
        )
    return rows


def layer_table(pack, args) -> list[str]:
    import comfy.model_management as mm
    from comfy.ldm.modules.attention import optimized_attention

    core = pack.nested_core
    device = mm.get_torch_device()
    rows = [
        "",
        f"One attn2 layer at SDXL 1024x1024 shapes, batch cond+uncond, context 77, {args.dtype}",
        "",
        "| queries | heads x 64 | nested tokens | subjects | plain (ms) | nested (ms) | ratio | largest tensor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for queries, heads in ((4096, 10), (1024, 20)):
        width = heads * 64
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, n, width, generator=gen).to(device, args.dtype) for n in (queries, 77, 77))
        for tokens in args.tokens:
            for count in (1, 4):
                subjects = [
                    core.attention.NestedSubject(
                        torch.randn(1, tokens, width, generator=gen).to(device, args.dtype),
                        torch.randn(1, tokens, width, generator=gen).to(device, args.dtype),
                        core.attention.TokenPositions.from_lists([[5 + 3 * i], []], device),
                    )
                    for i in range(count)
                ]

                def plain(q=q, k=k, v=v, heads=heads):
                    return optimized_attention(q, k, v, heads)

                def nested(q=q, k=k, v=v, heads=heads, subjects=subjects):
                    return core.attention.nested_attention(
                        q, k, v, heads, subjects, base=optimized_attention(q, k, v, heads)
                    )

                plain_ms, nested_ms = _interleaved(plain, nested, args.rounds * args.repeats, q.is_cuda)
                watch = TensorWatch()
                with watch:
                    nested()
                rows.append(
                    f"| {queries} | {heads} | {tokens} | {count} | {plain_ms:.2f} | {nested_ms:.2f} | "
                    f"{nested_ms / plain_ms:.2f} | {list(watch.largest[1])} |"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512px images; 128 = 1024px)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per configuration and round")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--gpu", action="store_true", help="use the GPU ComfyUI finds (default: CPU)")
    parser.add_argument("--skip-unet", action="store_true")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    prepare_comfyui(cpu=not args.gpu)
    pack = load_pack()
    cpu = platform.processor() or platform.machine()
    device = (
        torch.cuda.get_device_name()
        if args.gpu and torch.cuda.is_available()
        else f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    )
    lines = [f"Nested Attention benchmark on {device}, torch {torch.__version__}", ""]
    if not args.skip_unet:
        lines += unet_table(pack, args)
    lines += layer_table(pack, args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
