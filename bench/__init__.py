"""The benchmark: the cost of nested attention against the unpatched model, measured in one run.

    ./dev bench                         # CPU: a UNet of SDXL's widths with fewer blocks
    ./dev bench --device cuda           # GPU: the real SDXL UNet at 1024 x 1024, fp16, batch 2

See ``python -m bench --help`` and README "Benchmark".
"""
