"""Guidance whose unconditional pass changes the reference canvas as well as dropping the prompt,
so the guidance scale also pushes towards what the references show. Two unconditional canvases:

- REF_GUIDANCE=blank: a white canvas and a zero mask, their CLIP features too. The miniature never
  trained without a canvas, and at scale 5 it oversaturated the subjects without raising identity
  (docs/miniature-world.md, Plan to finish, fifth session).
- REF_GUIDANCE=blur: the same canvas and mask with the canvas box-averaged over REF_BLUR_PX-pixel
  squares (default 8, one latent cell) and scaled back up, its CLIP features too: the colours and
  places stay and fine patterns (dots, checks, hair) go, so guidance pushes towards the detail
  that the missed single subjects lack (eighteenth session). The model has seen canvases of every
  layout, so a coarse one is nearer what it knows than an empty one.
- REF_GUIDANCE=0: unpatched (a control in the same code).

    REF_GUIDANCE=blur python experiments/reference_guidance.py world evaluate --model multi=MODEL --out EVAL ...

takes any `magref` command line and runs it with the patched sampler.
"""

import os
import sys

import torch
import torch.nn.functional as F

from magref.pipeline import MagrefPipeline

_condition, _image, _velocity = MagrefPipeline.prepare_condition, MagrefPipeline.encode_image, MagrefPipeline.conditioned_velocity
MODE = os.environ.get("REF_GUIDANCE", "blank")
BLUR_PX = int(os.environ.get("REF_BLUR_PX", "8"))


def unconditional_canvas(canvas: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the canvas the unconditional pass sees."""
    if MODE == "blank":
        return torch.ones_like(canvas)
    coarse = F.avg_pool2d(canvas.float(), BLUR_PX)
    return F.interpolate(coarse, size=canvas.shape[-2:], mode="bilinear", align_corners=False).to(canvas.dtype)


def prepare_condition(self, canvas, latent_mask, num_frames):
    mask = torch.zeros_like(latent_mask) if MODE == "blank" else latent_mask
    self._blank_condition = _condition(self, unconditional_canvas(canvas), mask, num_frames)
    return _condition(self, canvas, latent_mask, num_frames)


def encode_image(self, image, device=None):
    self._blank_image = _image(self, unconditional_canvas(image), device)
    return _image(self, image, device)


def conditioned_velocity(self, latents, condition, timestep, text_embeds, image_embeds, attention_kwargs=None, cache_context="cond"):
    if self._blank_condition.shape[2:] != condition.shape[2:]:
        raise SystemExit("reference_guidance.py: context windows are not supported (the unconditional canvas covers the whole video)")
    if cache_context == "uncond":
        condition, image_embeds = self._blank_condition.to(condition), self._blank_image.to(image_embeds)
    elif cache_context == "cfg":  # batched: the second half is the unconditional pass
        n = latents.shape[0] // 2
        condition = torch.cat([condition[:n], self._blank_condition.to(condition).expand_as(condition[n:])])
        image_embeds = torch.cat([image_embeds[:n], self._blank_image.to(image_embeds).expand_as(image_embeds[n:])])
    return _velocity(self, latents, condition, timestep, text_embeds, image_embeds, attention_kwargs, cache_context)


if __name__ == "__main__":
    if MODE not in ("blank", "blur", "0", "1"):
        raise SystemExit(f"REF_GUIDANCE={MODE!r}: use blank, blur or 0")
    MODE = "blank" if MODE == "1" else MODE  # the earlier spelling of blank
    if MODE != "0":
        MagrefPipeline.prepare_condition, MagrefPipeline.encode_image = prepare_condition, encode_image
        MagrefPipeline.conditioned_velocity = conditioned_velocity
    from magref.cli import main

    sys.exit(main(sys.argv[1:]))
