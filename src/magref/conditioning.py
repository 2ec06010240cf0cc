"""Conditioning tensors: the 4-channel reference mask, the condition clip and the CLIP input.

Shared by the pipeline and the trainer so both build the same 36-channel transformer input:
    channel_concat(noisy latent 16, reference mask 4, reference latent 16) -> 36 channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import MagrefInputError

TEMPORAL_STRIDE = 4  # VAE temporal stride: F = 4n+1 frames -> n+1 latent frames
# The OpenAI CLIP normalisation, which the official open-clip ViT-H uses too.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def check_num_frames(num_frames: int) -> None:
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        lower = max(1, (int(num_frames) - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1) if isinstance(num_frames, int) else 81
        raise MagrefInputError(
            f"Frame count {num_frames} is not of the form 4n+1 (the VAE compresses time by 4).",
            f"use e.g. {lower} or {lower + TEMPORAL_STRIDE} frames.",
        )


def num_latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def reference_mask(latent_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The 4-channel mask for F = 4n+1 frames.

    latent_mask: (h, w) or (B, h, w), 1 on reference latents.
    Returns (B, 4, n+1, h, w): frame 0's mask repeated once per VAE temporal sub-frame, all later
    frames 0 (the official code builds the same tensor with F hard-coded to 81).
    """
    check_num_frames(num_frames)
    if latent_mask.dim() == 2:
        latent_mask = latent_mask[None]
    b, h, w = latent_mask.shape
    frames = torch.zeros(b, num_frames, h, w, dtype=torch.float32, device=latent_mask.device)
    frames[:, 0] = latent_mask.float()
    frames = torch.cat([frames[:, :1].repeat_interleave(TEMPORAL_STRIDE, dim=1), frames[:, 1:]], dim=1)
    # (B, F+3, h, w) -> (B, n+1, 4, h, w) -> (B, 4, n+1, h, w)
    return frames.view(b, -1, TEMPORAL_STRIDE, h, w).transpose(1, 2).contiguous()


def canvas_to_tensor(canvas: Image.Image) -> torch.Tensor:
    """PIL RGB canvas -> (1, 3, H, W) float32 in [-1, 1] (as TF.to_tensor().sub(0.5).div(0.5))."""
    array = np.asarray(canvas.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].sub(0.5).div(0.5)


def condition_video(canvas: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, 3, H, W) canvas -> (B, 3, F, H, W) clip: the canvas, then F-1 black (zero) frames."""
    b, c, h, w = canvas.shape
    return torch.cat([canvas[:, :, None], canvas.new_zeros(b, c, num_frames - 1, h, w)], dim=2)


def channel_concat(noisy_latent: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Pixel-wise channel concatenation: (B,16,T,h,w) + (B,20,T,h,w) [mask 4; ref latent 16]."""
    return torch.cat([noisy_latent, condition], dim=1)


CONDITIONING_MODES = ("channel", "tokens")


def model_input(noisy_latent: torch.Tensor, condition: torch.Tensor, mode: str = "channel", mask_channels: bool = True) -> torch.Tensor:
    """The transformer input for a conditioning mode.

    channel (MAGREF): channel_concat -> (B, 36, T, h, w); with mask_channels=False the 4 mask
        channels carry zeros (the "no mask" ablation: same architecture, no region information).
    tokens (the Phantom-style alternative, an ablation): the reference latent (frame 0 of the
        condition) is appended as one more latent frame, so it reaches the video only through
        self-attention over extra tokens: (B, 16, T + 1, h, w), for a transformer with 16 input
        channels. `model_output` removes the extra frame again.
    """
    if mode == "tokens":
        return torch.cat([noisy_latent, condition[:, 4:, :1]], dim=2)
    if not mask_channels:
        condition = torch.cat([torch.zeros_like(condition[:, :4]), condition[:, 4:]], dim=1)
    return channel_concat(noisy_latent, condition)


def model_output(prediction: torch.Tensor, mode: str = "channel") -> torch.Tensor:
    """The velocity for the video latent only (drops the appended reference frame in tokens mode)."""
    return prediction[:, :, :-1] if mode == "tokens" else prediction


def clip_image_processor(image_size: int):
    """A CLIP image processor with the official mean/std at `image_size`: models store it as
    their `image_processor` component; `encode_image` reads its size, mean and std."""
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)


def clip_pixel_values(
    canvas: torch.Tensor, size: tuple[int, int], mean: list[float], std: list[float]
) -> torch.Tensor:
    """The official CLIP preprocessing of the [-1, 1] canvas tensor.

    Differs from transformers' CLIPImageProcessor on purpose: the official code resizes the
    tensor (bicubic, align_corners=False, no aspect-preserving crop), then maps to [0, 1] and
    normalises; resizing a PIL image gives different pixels and breaks parity.
    """
    x = F.interpolate(canvas.float(), size=size, mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
