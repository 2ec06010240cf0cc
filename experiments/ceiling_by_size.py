"""The identity ceiling of a VAE at another frame size: held-out clips of 1-3 subjects rendered at
`--size`, decoded by the VAE, scored by the shipped identity test (a proxy: it was trained on the
8x VAE's 64 px decodes; frames are resized to its 64 px input).

    python experiments/ceiling_by_size.py --size 128 [--vae src/magref/assets/models/miniature/vae] [--clips 48]

It asks whether the 8x VAE at 128x128 (16x16 latents, the 8x8 tokens per frame of issue 21)
keeps subjects better than the 4x VAE at 64x64 with the same token count.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--vae", default=None)
    ap.add_argument("--clips", type=int, default=48)
    args = ap.parse_args()

    from diffusers import AutoencoderKLWan

    from magref.models import WORLD_VAE_PATH
    from magref.world.clips import make_clip
    from magref.world.identify import identify_video, identity_hit, load_identifier, vae_round_trip
    from magref.world.identities import distractors_for, identity_ids
    from magref.world.render import identity

    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan.from_pretrained(args.vae or str(WORLD_VAE_PATH), torch_dtype=torch.float32).eval()
    judge = load_identifier()
    hits = {name: {1: [], 2: [], 3: []} for name in ("rendered", "decoded")}
    for k in range(args.clips):
        rng = np.random.default_rng([29, 1, k])  # the clips of identify.ceiling, at another size
        n = 1 + k % 3
        ids = [int(i) for i in rng.choice(identity_ids("heldout"), size=n, replace=False)]
        clip = make_clip([identity(i) for i in ids], rng, 13, args.size, args.size)
        for name, frames in (("rendered", clip.frames), ("decoded", vae_round_trip(vae, clip.frames[None])[0])):
            scores = identify_video(judge, frames[4:])
            for i in ids:
                hits[name][n].append(identity_hit(scores, i, distractors_for(i, 7, np.random.default_rng([7, k])))[0])
    for name, h in hits.items():
        print(f"{args.size}px {name}: " + ", ".join(f"{n} subjects {np.mean(v):.3f} (n={len(v)})" for n, v in h.items()))


if __name__ == "__main__":
    main()
