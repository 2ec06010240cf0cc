"""The training step's frozen encoding: the reference condition (VAE of canvas + black frames)
and CLIP features, one call per example (as the trainer did) against one call per batch (as it
does now), in one run on the miniature model (random weights: timing does not depend on them).

    python benchmarks/train_encode.py [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from magref.pipeline import MagrefPipeline
from magref.world.train import FRAMES, SIZE, miniature_components


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pipe = MagrefPipeline(**miniature_components())
    g = torch.Generator().manual_seed(0)
    canvas = torch.rand(args.batch, 3, SIZE, SIZE, generator=g) * 2 - 1
    masks = (torch.rand(args.batch, SIZE // 8, SIZE // 8, generator=g) > 0.5).float()

    def per_example():
        cond = torch.cat([pipe.prepare_condition(canvas[i : i + 1], masks[i], FRAMES) for i in range(args.batch)])
        return cond, torch.cat([pipe.encode_image(canvas[i : i + 1]) for i in range(args.batch)])

    def batched():
        return pipe.prepare_condition(canvas, masks, FRAMES), pipe.encode_image(canvas)

    with torch.no_grad():
        ref, new = per_example(), batched()  # warm-up, and the two must agree
        diff = max((a - b).abs().max().item() for a, b in zip(ref, new))
        times = {}
        for name, fn in (("per example (before)", per_example), ("one call per batch (now)", batched)):
            t = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            times[name] = (time.perf_counter() - t) / args.repeats
    base = times["per example (before)"]
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {FRAMES} frames {SIZE}x{SIZE}, max |difference| {diff:.1e}")
    print("| encoding | s / batch | speed-up |\n|---|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.3f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
