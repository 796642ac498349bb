"""python -m bench [--device cuda] ...: print the benchmark tables (Markdown)."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from nested_attention.nested_train.comfy_runtime import prepare_comfyui


def arguments(argv: "list[str] | None" = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu", action="store_true", help="the same as --device cuda")
    parser.add_argument(
        "--unet",
        choices=["sdxl", "sdxl-widths"],
        default=None,
        help="sdxl: ComfyUI's SDXL UNet (70 attn2 layers; the default on cuda); sdxl-widths: SDXL's "
        "widths with 2 transformer blocks per level (14 attn2 layers; the default on the CPU)",
    )
    parser.add_argument("--latent", type=int, default=None, help="latent side (default: 128 on cuda, 32 on cpu)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 10 cuda, 5 cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per configuration and round")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64], help="nested tokens per subject")
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    parser.add_argument("--skip-layer", action="store_true", help="only the UNet table")
    parser.add_argument("--skip-unet", action="store_true", help="only the one-layer table")
    args = parser.parse_args(argv)
    cuda = args.gpu or args.device == "cuda"
    args.device = "cuda" if cuda else "cpu"
    args.unet = args.unet or ("sdxl" if cuda else "sdxl-widths")
    args.latent = args.latent or (128 if cuda else 32)
    args.rounds = args.rounds or (10 if cuda else 5)
    args.dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    return args


def main(argv: "list[str] | None" = None) -> int:
    args = arguments(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible to PyTorch here", file=sys.stderr)
        return 2
    prepare_comfyui(cpu=args.device == "cpu")
    from .layer import layer_table  # these import ComfyUI, prepared just above
    from .unet import unet_table

    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    lines = [f"Nested Attention benchmark on {where}, torch {torch.__version__}", ""]
    if not args.skip_unet:
        lines += unet_table(args)
    if not args.skip_layer:
        lines += layer_table(args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
