"""Sliding context windows: videos longer than the model was trained for.

At each denoising step the transformer sees overlapping windows of the trained length instead of
the whole latent video, and their velocities are blended where they overlap. MAGREF's condition
lives in latent frame 0 (the canvas latent and its mask), so every window gets its own copy of
that slot: the window's input is [latent frame 0; its slice of the video], conditioned with the
condition of a clip of the trained length, exactly as in training. Only the first window's
frame-0 output is kept; the others' slot outputs are dropped.

Frame 0 is the canvas for the official model (its target starts with the canvas; those decoded
frames are dropped) and the clip's own first frame for the miniature (`first_frame: clip`): in
both, each window reads as a clip that starts at frame 0 and goes on with its slice, so the
references condition every window the same way.

Latent frames: F = 4n + 1 video frames are n + 1 latent frames, frame 0 coded alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .conditioning import TEMPORAL_STRIDE
from .errors import MagrefInputError

BLENDS = ("linear", "pyramid")


@dataclass(frozen=True)
class ContextWindows:
    frames: int  # video frames per window, 4n+1, the canvas slot's frame included (the trained length)
    overlap: int  # video frames shared by neighbouring windows, a multiple of 4
    blend: str = "linear"  # linear: ramps across the overlap; pyramid: a triangle over each window

    def __post_init__(self):
        if self.frames < 1 + 2 * TEMPORAL_STRIDE or (self.frames - 1) % TEMPORAL_STRIDE:
            raise MagrefInputError(f"Context window of {self.frames} frames is not of the form 4n+1 with n >= 2.",
                                   "use e.g. --context-frames 13 (the miniature) or 81 (the official model).")
        if self.overlap < 0 or self.overlap % TEMPORAL_STRIDE or self.overlap >= self.frames - 1:
            raise MagrefInputError(f"Context overlap of {self.overlap} frames is not a multiple of 4 below the window's {self.frames - 1} video frames.",
                                   "use e.g. --context-overlap 4.")
        if self.blend not in BLENDS:
            raise MagrefInputError(f"Unknown context blend {self.blend!r}.", f"use one of {', '.join(BLENDS)}.")

    @property
    def latent_length(self) -> int:
        return (self.frames - 1) // TEMPORAL_STRIDE + 1

    @property
    def latent_overlap(self) -> int:
        return self.overlap // TEMPORAL_STRIDE

    def spans(self, num_latent_frames: int) -> list[list[int]]:
        """Each window's video latent frames (1 .. T-1), in order; the last window ends at the
        last frame (it may overlap its neighbour more)."""
        per = self.latent_length - 1
        video = num_latent_frames - 1
        if video <= per:
            return [list(range(1, num_latent_frames))]
        stride = per - self.latent_overlap
        starts = list(range(1, video - per + 2, stride))
        if starts[-1] + per - 1 < video:
            starts.append(video - per + 1)
        return [list(range(s, s + per)) for s in starts]

    def weights(self, length: int) -> torch.Tensor:
        """Blend weight of each of a window's `length` video frames (> 0 everywhere)."""
        i = torch.arange(length, dtype=torch.float32)
        if self.blend == "pyramid":
            return torch.minimum(i + 1, length - i)
        ramp = float(self.latent_overlap + 1)
        return torch.minimum(torch.minimum((i + 1) / ramp, (length - i) / ramp), torch.ones(length))

    def to_dict(self) -> dict:
        return {"frames": self.frames, "overlap": self.overlap, "blend": self.blend}


def windowed_velocity(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor, condition: torch.Tensor,
                      windows: ContextWindows) -> torch.Tensor:
    """The blended velocity of `latents` (B, C, T, h, w) from `velocity(window_latents,
    window_condition)` over the windows; `condition` is the whole video's, of which the first
    window-length latent frames are exactly a trained-length clip's (the VAE is causal)."""
    T = latents.shape[2]
    spans = windows.spans(T)
    if len(spans) == 1:
        return velocity(latents, condition)
    cond = condition[:, :, : windows.latent_length]
    out = torch.zeros_like(latents, dtype=torch.float32)
    total = torch.zeros(T, dtype=torch.float32, device=latents.device)
    for k, span in enumerate(spans):
        v = velocity(latents[:, :, [0, *span]], cond)  # (B, C, 1 + len(span), h, w)
        w = windows.weights(len(span)).to(latents.device)
        out[:, :, span] += v[:, :, 1:].float() * w.view(1, 1, -1, 1, 1)
        total[span] += w
        if k == 0:  # the canvas slot: the first window's output; the others' are dropped
            out[:, :, 0] = v[:, :, 0].float()
            total[0] = 1.0
    return out / total.view(1, 1, -1, 1, 1)
