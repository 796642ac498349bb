"""The toy world: a procedural world, small models of ComfyUI's classes trained on it on a CPU, and
the evaluation of nested attention against its baselines there (``python -m toy_world run``)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "weights"  # the committed models
RESULTS = HERE / "results"  # the committed tables and figures
