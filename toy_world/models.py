"""The toy world's models, built with ComfyUI's own classes (prepare ComfyUI first).

* VAE: ComfyUI's TAESD architecture (64 x 64 images <-> 4 x 8 x 8 latents), trained here.
* UNet: ComfyUI's SD1.5 family (supported_models.SD15) at a small width, trained here.
* Text encoder: ComfyUI's SD1 CLIP class at width 64 with the real tokenizer, trained here with the
  UNet (``text_forward`` is its forward pass for training, ComfyUI's arithmetic without the
  in-place additions autograd cannot follow).
* Image encoder: ComfyUI's CLIP vision class (64 x 64 input, 8 x 8 patches), frozen random, seeded.

Committed weights live in toy_world/weights/.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import torch
from comfy.ldm.modules.attention import optimized_attention_for_device
from safetensors.torch import load_file, save_file

from nested_attention.nested_train.config import TrainConfig
from nested_attention.nested_train.frozen import FrozenParts
from nested_attention.nested_train.init_weights import init_weights_

from . import WEIGHTS

LATENT_SCALE = 0.18215  # SD1.5's latent factor: ComfyUI multiplies VAE latents by it
TEXT_WIDTH = 64
VISION_WIDTH = 64
UNET = dict(
    in_channels=4,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    use_temporal_attention=False,
    use_temporal_resblock=False,
    use_checkpoint=False,
    model_channels=64,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    transformer_depth=[1, 1],
    transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1],
    context_dim=TEXT_WIDTH,
    num_heads=4,
    num_head_channels=-1,
    use_linear_in_transformer=False,
    adm_in_channels=None,
    image_size=8,
)
TEXT = dict(
    hidden_size=TEXT_WIDTH, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, projection_dim=TEXT_WIDTH
)
VISION = dict(
    model_type="clip_vision_model",
    hidden_size=VISION_WIDTH,
    intermediate_size=128,
    num_attention_heads=4,
    num_hidden_layers=4,
    image_size=64,
    patch_size=8,
    projection_dim=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    num_channels=3,
)


CODEC_GAIN = 2.5  # latent = gain * (colour - 0.5): about unit spread for the world's colours


def codec_taesd() -> comfy.taesd.taesd.TAESD:
    """A TAESD whose weights start as an exact cell-colour codec for this world.

    Every residual block starts as the identity (its last convolution is zero), the three stride-2
    convolutions pick every other pixel (so the encoder reads one pixel per 8 x 8 cell), and the
    first and last convolutions map colours to latents, z = gain * (rgb - 0.5) (4th channel: the
    grey level), and back. Training then fine-tunes it on the world's images.
    """
    taesd = comfy.taesd.taesd.TAESD()
    with torch.no_grad():
        for module in taesd.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        encoder, decoder = taesd.taesd_encoder, taesd.taesd_decoder
        for index in range(3):
            encoder[0].weight[index, index, 1, 1] = 1.0  # rgb into channels 0-2
            for stride_conv in (encoder[2], encoder[6], encoder[10]):
                stride_conv.weight[index, index, 1, 1] = 1.0  # keep one pixel in two
            encoder[14].weight[index, index, 1, 1] = CODEC_GAIN  # z_i = gain * (c_i - 0.5)
            encoder[14].bias[index] = -CODEC_GAIN / 2
            encoder[14].weight[3, index, 1, 1] = CODEC_GAIN / 3  # z_3: grey level
            decoder[1].weight[index, index, 1, 1] = 1.0 / CODEC_GAIN  # c_i = z_i / gain + 0.5
            decoder[1].bias[index] = 0.5
            for conv in (decoder[7], decoder[12], decoder[17]):
                conv.weight[index, index, 1, 1] = 1.0
            decoder[19].weight[index, index, 1, 1] = 1.0
        encoder[14].bias[3] = -CODEC_GAIN / 2
    return taesd


def vae_state(taesd: comfy.taesd.taesd.TAESD) -> dict[str, torch.Tensor]:
    """TAESD weights as ComfyUI's VAE loader recognises them (SD1.5 latent scale)."""
    state = {k: v.detach().clone() for k, v in taesd.state_dict().items() if not k.startswith("vae_")}
    state["vae_scale"] = torch.tensor(LATENT_SCALE)
    state["vae_shift"] = torch.tensor(0.0)
    return state


def unet_model_config():
    config = comfy.supported_models.SD15(dict(UNET))
    config.unet_config["num_heads"] = UNET["num_heads"]
    config.unet_config["num_head_channels"] = UNET["num_head_channels"]
    config.set_inference_dtype(torch.float32, None)
    return config


def build_unet(state: Optional[dict[str, torch.Tensor]] = None, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    model = unet_model_config().get_model({}, device=torch.device("cpu"))
    unet = model.diffusion_model
    for module in unet.modules():
        for kind in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(module, kind):
                kind.reset_parameters(module)
    torch.manual_seed(seed)
    if state is not None:
        unet.load_state_dict(state, strict=True)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_clip(state: Optional[dict[str, torch.Tensor]] = None, seed: int = 1) -> comfy.sd.CLIP:
    """The text encoder (float32): seeded random weights, then the trained ``state`` when given
    (the state dict of ``clip.cond_stage_model.clip_l``, as ``text.safetensors`` holds it)."""
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": TEXT, "dtype": torch.float32})
    init_weights_(clip.cond_stage_model, seed, scale=0.2)
    if state is not None:
        clip.cond_stage_model.clip_l.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return clip


def token_ids(clip: comfy.sd.CLIP, caption: str) -> list[int]:
    """The 77 token ids ComfyUI's SD1 tokenizer gives a (short) caption."""
    return [int(entry[0]) for entry in clip.tokenize(caption)["l"][0]]


def text_forward(clip: comfy.sd.CLIP, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's output for token ids [B, 77] as ComfyUI computes it (layer "last": the final
    layer norm of the last layer; causal attention), with out-of-place residual additions so that
    gradients reach its weights. A test checks it against ComfyUI's own forward."""
    model = clip.cond_stage_model.clip_l.transformer.text_model
    x = model.embeddings(ids, dtype=torch.float32)
    length = x.shape[1]
    causal = torch.full((length, length), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
    attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
    for layer in model.encoder.layers:
        x = x + layer.self_attn(layer.layer_norm1(x), causal, attention)
        x = x + layer.mlp(layer.layer_norm2(x))
    return model.final_layer_norm(x)


def build_clip_vision(seed: int = 2) -> comfy.clip_vision.ClipVisionModel:
    """Frozen random image encoder: rebuilt identically from its seed."""
    with tempfile.TemporaryDirectory(prefix="toy_clip_vision_") as folder:
        config = Path(folder) / "config.json"
        config.write_text(json.dumps(VISION))
        vision = comfy.clip_vision.ClipVisionModel(str(config))
    init_weights_(vision.model, seed, scale=0.1)
    return vision


def build_vae(state: dict[str, torch.Tensor]) -> comfy.sd.VAE:
    return comfy.sd.VAE(sd=state)


MODEL_FILES = ("unet.safetensors", "text.safetensors", "vae.safetensors")


def load_toy(folder: Path = WEIGHTS):
    """(model, clip, vae) from committed weights; the image encoder is build_clip_vision()."""
    unet, text, vae = (load_file(folder / name) for name in MODEL_FILES)
    return build_unet({k: v.float() for k, v in unet.items()}), build_clip(text), build_vae(vae)


@dataclass(frozen=True)
class ToyParts:
    """The toy world's models as the trainer's frozen parts (a ``nested_train.frozen.FrozenPartsLoader``)."""

    weights: Path = WEIGHTS

    def problems(self, config: TrainConfig) -> list[str]:
        missing = [n for n in MODEL_FILES if not (self.weights / n).is_file()]
        return [f"the toy world's {n} is not in {self.weights}" for n in missing]

    def load(self, config: TrainConfig) -> FrozenParts:
        return FrozenParts.of(*load_toy(self.weights), build_clip_vision())


def save_weights(folder: Path, name: str, state: dict[str, torch.Tensor], dtype=torch.float16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_file(
        {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in state.items()},
        path,
    )
    return path
