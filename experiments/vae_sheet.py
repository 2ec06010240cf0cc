"""A picture of what a VAE keeps of held-out subjects: fresh world clips of 1, 2 and 3 held-out
subjects, each as rendered (upper row) and as the VAE encodes and decodes it (lower row),
frames 4-12 every other one, upscaled (nearest) so a 64 px frame is 256 px wide.

    python experiments/vae_sheet.py VAE_DIR OUT.png [--seed 0]
"""

import argparse

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from PIL import Image, ImageDraw

from magref.world.clips import make_clip
from magref.world.identify import vae_round_trip
from magref.world.identities import identity_ids
from magref.world.render import identity

SCALE = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vae_dir")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vae = AutoencoderKLWan.from_pretrained(args.vae_dir, torch_dtype=torch.float32).eval()
    rows = []
    for n in (1, 2, 3):
        rng = np.random.default_rng([31, args.seed, n])
        ids = [int(i) for i in rng.choice(identity_ids("heldout"), size=n, replace=False)]
        clip = make_clip([identity(i) for i in ids], rng, 13, 64, 64)
        rows += [(f"{n} rendered", clip.frames), (f"{n} decoded", vae_round_trip(vae, clip.frames[None])[0])]
    shown, cell, label = range(4, 13, 2), 64 * SCALE, 110
    sheet = Image.new("RGB", (label + cell * len(shown), cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, frames) in enumerate(rows):
        draw.text((6, r * cell + cell // 2), name, fill="black")
        for c, t in enumerate(shown):
            sheet.paste(Image.fromarray(frames[t]).resize((cell, cell), Image.NEAREST), (label + c * cell, r * cell))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
