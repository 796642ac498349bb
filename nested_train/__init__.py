"""Training nested adapters with the pack's own inference code path.

Run ``python -m nested_train --config my_run.toml`` (or ``./dev train ...``); see README
"Train your own adapter". The base model, its text encoders and the CLIP vision encoder are frozen;
the Q-Former and the per-layer nested key/value projections are trained through the same attn2
patch and nested-attention function the ComfyUI nodes use.

This package is part of the pack and is imported as ``nested_attention.nested_train``.
"""
