"""Small random-weight stand-ins built with ComfyUI's own classes (prepare ComfyUI first: comfy_env).

Shapes follow the real families: SD1.5 (conv transformer in/out, 8-head style, context from CLIP-L)
and SDXL (linear transformer in/out, depth-2 blocks, two text encoders, pooled "adm" input), with
tiny widths so a sampling step takes milliseconds on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import torch

from nested_attention.nested_train.config import TrainConfig
from nested_attention.nested_train.frozen import FrozenParts
from nested_attention.nested_train.init_weights import init_weights_

#: Settings every UNet built here shares (ComfyUI's SD-family UNet, no temporal layers).
UNET_COMMON = dict(
    in_channels=4,
    out_channels=4,
    image_size=32,
    use_spatial_transformer=True,
    legacy=False,
    use_temporal_attention=False,
    use_temporal_resblock=False,
    use_checkpoint=False,
)

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": dict(
        model_channels=32,
        channel_mult=[1, 2, 2],
        num_res_blocks=[1, 1, 1],
        transformer_depth=[1, 1, 0],
        transformer_depth_middle=1,
        transformer_depth_output=[1, 1, 1, 1, 0, 0],
        use_linear_in_transformer=False,
        context_dim=32,
        num_heads=2,
        num_head_channels=-1,
        adm_in_channels=None,
    ),
    "sdxl": dict(
        model_channels=32,
        channel_mult=[1, 2, 2],
        num_res_blocks=[1, 1, 1],
        transformer_depth=[0, 1, 2],
        transformer_depth_middle=2,
        transformer_depth_output=[0, 0, 1, 1, 2, 2],
        use_linear_in_transformer=True,
        context_dim=64,
        num_head_channels=16,
        num_heads=-1,
        adm_in_channels=32 + 6 * 256,
        num_classes="sequential",
    ),
}
#: Text encoder sizes: SDXL concatenates CLIP-L and CLIP-G, 32 + 32 = the tiny SDXL context width.
CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3, projection_dim=32)
CLIP_VISION_CONFIG = dict(
    model_type="clip_vision_model",
    hidden_size=48,
    intermediate_size=96,
    num_attention_heads=2,
    num_hidden_layers=3,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    num_channels=3,
)
CONTEXT_DIM = {"sd15": 32, "sdxl": 64}
POOLED_DIM = 32


def model_config(kind: str, unet: Optional[dict[str, Any]] = None):
    """A ComfyUI model config (supported_models.SD15 / SDXL) with the given or tiny UNet settings."""
    unet = dict(UNET_COMMON, **(UNET_CONFIGS[kind] if unet is None else unet))
    family = comfy.supported_models.SD15 if kind == "sd15" else comfy.supported_models.SDXL
    config = family(unet)
    for key in ("num_heads", "num_head_channels"):  # BASE.__init__ overwrites these with the real ones
        config.unet_config[key] = unet[key]
    return config


def build_unet(
    kind: str = "sd15", seed: int = 0, unet: Optional[dict[str, Any]] = None, dtype: torch.dtype = torch.float32
) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around a random-weight UNet of the given family."""
    config = model_config(kind, unet)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=torch.device("cpu"))
    init_weights_(model, seed)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_clip(kind: str = "sd15", seed: int = 0) -> comfy.sd.CLIP:
    """A tiny text encoder with the real tokenizer (bundled vocabulary, no download)."""
    if kind == "sd15":
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": CLIP_CONFIG}
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": CLIP_CONFIG, "clip_g_model_config": CLIP_CONFIG}
    clip = comfy.sd.CLIP(target, model_options=options)
    init_weights_(clip.cond_stage_model, seed, scale=0.1)
    return clip


def build_clip_vision(seed: int = 0, folder: Optional[Path] = None) -> comfy.clip_vision.ClipVisionModel:
    """A tiny CLIP vision model of ComfyUI's class (ViT-H layout, width 48, 32x32 images)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_clip_vision_"))
    path = folder / "tiny_clip_vision.json"
    path.write_text(json.dumps(CLIP_VISION_CONFIG))
    vision = comfy.clip_vision.ClipVisionModel(str(path))
    init_weights_(vision.model, seed, scale=0.1)
    return vision


def build_vae(seed: int = 0) -> comfy.sd.VAE:
    """A random-weight TAESD, which ComfyUI's VAE class recognises from its tensor names."""
    taesd = init_weights_(comfy.taesd.taesd.TAESD(), seed, scale=0.05)
    state = {k: v for k, v in taesd.state_dict().items() if not k.startswith("vae_")}
    return comfy.sd.VAE(sd=state)


def conditioning(kind: str, tokens: int = 77, seed: int = 0, batch: int = 1) -> list:
    """Random conditioning in ComfyUI's list format, for tests that bypass the text encoder."""
    gen = torch.Generator().manual_seed(seed)
    extra: dict[str, Any] = {}
    if kind == "sdxl":
        extra = {"pooled_output": torch.randn(batch, POOLED_DIM, generator=gen), "width": 64, "height": 64}
    return [[torch.randn(batch, tokens, CONTEXT_DIM[kind], generator=gen), extra]]


@dataclass(frozen=True)
class TinyParts:
    """The stand-ins as the trainer's frozen parts (a ``nested_train.frozen.FrozenPartsLoader``)."""

    kind: str = "sd15"
    seed: int = 0

    def problems(self, config: TrainConfig) -> list[str]:
        return [] if self.kind in UNET_CONFIGS else [f"no tiny model of kind '{self.kind}'"]

    def load(self, config: TrainConfig) -> FrozenParts:
        return FrozenParts.of(
            build_unet(self.kind, self.seed),
            build_clip(self.kind, self.seed),
            build_vae(self.seed),
            build_clip_vision(self.seed),
        )
