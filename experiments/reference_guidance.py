"""Guidance whose unconditional pass drops the reference canvas as well as the prompt (a white
canvas and a zero mask, their CLIP features too), so the guidance scale also pushes towards the
references. An experiment (docs/miniature-world.md, Plan to finish): the miniature never trained
without a canvas, and at scale 5 it oversaturated the subjects without raising identity.

    python experiments/reference_guidance.py world evaluate --model multi=MODEL --out EVAL ...

takes any `magref` command line and runs it with the patched sampler (REF_GUIDANCE=0: unpatched).
"""

import os
import sys

import torch

from magref.pipeline import MagrefPipeline

_condition, _image, _velocity = MagrefPipeline.prepare_condition, MagrefPipeline.encode_image, MagrefPipeline.conditioned_velocity


def prepare_condition(self, canvas, latent_mask, num_frames):
    self._blank_condition = _condition(self, torch.ones_like(canvas), torch.zeros_like(latent_mask), num_frames)
    return _condition(self, canvas, latent_mask, num_frames)


def encode_image(self, image, device=None):
    self._blank_image = _image(self, torch.ones_like(image), device)
    return _image(self, image, device)


def conditioned_velocity(self, latents, condition, timestep, text_embeds, image_embeds, attention_kwargs=None, cache_context="cond"):
    if self._blank_condition.shape[2:] != condition.shape[2:]:
        raise SystemExit("reference_guidance.py: context windows are not supported (the blank condition covers the whole video)")
    if cache_context == "uncond":
        condition, image_embeds = self._blank_condition.to(condition), self._blank_image.to(image_embeds)
    elif cache_context == "cfg":  # batched: the second half is the unconditional pass
        n = latents.shape[0] // 2
        condition = torch.cat([condition[:n], self._blank_condition.to(condition).expand_as(condition[n:])])
        image_embeds = torch.cat([image_embeds[:n], self._blank_image.to(image_embeds).expand_as(image_embeds[n:])])
    return _velocity(self, latents, condition, timestep, text_embeds, image_embeds, attention_kwargs, cache_context)


if __name__ == "__main__":
    if os.environ.get("REF_GUIDANCE", "1") == "1":
        MagrefPipeline.prepare_condition, MagrefPipeline.encode_image = prepare_condition, encode_image
        MagrefPipeline.conditioned_velocity = conditioned_velocity
    from magref.cli import main

    sys.exit(main(sys.argv[1:]))
