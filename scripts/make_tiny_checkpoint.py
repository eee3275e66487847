"""Write a random-weight checkpoint that ComfyUI recognises as SD1.5 (no download needed).

Runs inside the ComfyUI venv; ``comfyui_cpu.py`` launches it as
``python make_tiny_checkpoint.py --comfyui <ComfyUI dir> --out <file>``.

ComfyUI identifies SD1.5 from weight shapes only: a UNet with ``model_channels`` 320 and
``context_dim`` 768 (no linear-in-transformer, no ADM input). Its depth is free, so this file
holds a one-level UNet (one res block and one transformer per stage; 25.8 M parameters), the
real-sized CLIP-L text encoder (123 M; its config is fixed) and a TAESD VAE (2.4 M; ComfyUI
picks TAESD when ``taesd_decoder`` keys are present).

Key names and shapes come from ComfyUI's own model classes built on the meta device. Weights
are drawn from a fixed seed in sorted key order, so the same ComfyUI and torch versions always
write the same bytes. Large 2-D weights are stored as float8_e4m3fn, which ComfyUI upcasts on
load: 166 MB instead of 303 MB in float16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED = 1234
FP8_MIN_ELEMENTS = 1 << 16
UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."
# TAESD's last decoder conv makes the RGB image; with plain random weights nearly every pixel
# clips to white. A smaller gain and a 0.5 bias give mid-tone noise that varies with the seed.
RGB_CONV = VAE_PREFIX + "taesd_decoder.19."
RGB_GAIN, RGB_BIAS = 0.25, 0.5
# What comfy.model_detection.detect_unet_config would report for this UNet, plus SD15's
# unet_extra_config (8 heads).
UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
    "transformer_depth_output": [1, 1], "transformer_depth_middle": 1, "context_dim": 768,
    "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_checkpoint": False, "use_temporal_resblock": False, "use_temporal_attention": False,
}


def _shapes() -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, kind) for the three sub-models, built without allocating memory."""
    import json

    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    clip_config = json.loads(Path(comfy.clip_model.__file__).with_name("sd1_clip_config.json")
                             .read_text())
    with torch.device("meta"):
        unet = UNetModel(**UNET_CONFIG, device="meta", operations=ops)
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", ops)
        vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for prefix, model in ((UNET_PREFIX, unet), (CLIP_PREFIX, clip), (VAE_PREFIX, vae)):
        for name, tensor in model.state_dict().items():
            if name == "text_projection.weight":
                continue  # SD1.5 files have none; ComfyUI then uses an identity projection
            shapes[prefix + name] = (tuple(tensor.shape), _kind(name, tensor.ndim))
    return shapes


def _kind(name: str, ndim: int) -> str:
    if ndim == 0:
        return "one" if name.endswith("scale") else "zero"  # TAESD's vae_scale / vae_shift
    if name.endswith(".bias"):
        return "zero"
    if ndim == 1:
        return "one"  # every 1-D weight here belongs to a GroupNorm or LayerNorm
    return "fan_in"


def _check_detected_as_sd15(shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
    import comfy.model_detection
    import comfy.supported_models
    import torch

    meta = {k: torch.empty(s, device="meta") for k, (s, _) in shapes.items()}
    config = comfy.model_detection.model_config_from_unet(meta, UNET_PREFIX)
    if type(config) is not comfy.supported_models.SD15:
        raise SystemExit(f"ComfyUI would not load this as SD1.5 but as {type(config)}")


def _tensors(
    shapes: dict[str, tuple[tuple[int, ...], str]], fp8: bool
) -> dict[str, torch.Tensor]:
    import math

    import torch

    generator = torch.Generator().manual_seed(SEED)
    big = torch.float8_e4m3fn if fp8 else torch.float16
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape, kind = shapes[key]
        if key == RGB_CONV + "bias":
            tensor = torch.full(shape, RGB_BIAS)
        elif kind == "zero":
            tensor = torch.zeros(shape)
        elif kind == "one":
            tensor = torch.ones(shape)
        else:
            std = 1.0 / math.sqrt(math.prod(shape[1:]))
            gain = RGB_GAIN if key == RGB_CONV + "weight" else 1.0
            tensor = torch.randn(shape, generator=generator) * (std * gain)
        large_2d = len(shape) == 2 and math.prod(shape) >= FP8_MIN_ELEMENTS
        out[key] = tensor.to(big if large_2d else torch.float16).contiguous()
    return out


def _write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write the safetensors format by hand, so equal tensors always give equal bytes.

    (``safetensors.torch.save_file`` orders the metadata entries differently from run to run.)
    """
    import json

    import torch

    names = {torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
    header: dict[str, object] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for key in sorted(tensors):
        tensor = tensors[key]
        blob = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[key] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data must start 8-byte aligned
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for blob in blobs:
            out.write(blob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp16", action="store_true", help="no float8 weights (bigger file)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # else comfy.model_management asks torch for CUDA at import

    shapes = _shapes()
    _check_detected_as_sd15(shapes)
    if shapes[RGB_CONV + "weight"][0] != (3, 64, 3, 3):
        raise SystemExit(f"TAESD layout changed: {RGB_CONV}weight is not the RGB conv")
    tensors = _tensors(shapes, fp8=not args.fp16)
    metadata = {"format": "pt", "comfy_mcp": f"random SD1.5-shaped weights, seed {SEED}"}
    _write_safetensors(args.out, tensors, metadata)
    count = sum(t.numel() for t in tensors.values())
    print(f"wrote {args.out}: {len(tensors)} tensors, {count / 1e6:.1f} M parameters",
          file=sys.stderr)


if __name__ == "__main__":
    main()
