"""Bytes per clip and decode cost of the shard clip codecs (data/shards.CLIP_CODECS), with the
difference each makes to the frames, at the real training size (480x832, 81 frames).

    python benchmarks/clip_codecs.py [--height 480] [--width 832] [--frames 81]

Clips: the procedural world rendered at that size (flat colours: compresses better than film),
and the same clip with per-pixel noise (sigma 3 levels, fresh every frame: sensor grain, the
hard case for a video codec). Real footage lies between the two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    args = ap.parse_args()

    from magref.data.shards import CLIP_CODECS, decode_clip, encode_clip
    from magref.world.clips import make_clip
    from magref.world.render import identity

    world = make_clip([identity(3), identity(8)], np.random.default_rng(0), args.frames, args.height, args.width).frames
    grain = np.clip(world.astype(np.int16) + np.random.default_rng(1).normal(0, 3, world.shape).round().astype(np.int16), 0, 255).astype(np.uint8)
    print(f"{args.width}x{args.height}, {args.frames} frames\n")
    print("| clip | codec | bytes per clip | vs raw | encode s | decode s | PSNR (dB) |\n|---|---|---|---|---|---|---|")
    for name, clip in (("procedural world", world), ("world + grain (sigma 3)", grain)):
        raw = None
        for codec, (suffix, *_) in sorted(CLIP_CODECS.items(), key=lambda kv: kv[0] != "raw"):  # raw first: the ratios need it
            t0 = time.perf_counter()
            data = encode_clip(clip, codec)
            t1 = time.perf_counter()
            back = decode_clip(data, suffix)
            t2 = time.perf_counter()
            raw = len(data) if codec == "raw" else raw
            ratio = f"1/{raw / len(data):.0f}" if raw and codec != "raw" else "1"
            print(f"| {name} | {codec} | {len(data) / 1e6:.2f} MB | {ratio} | {t1 - t0:.1f} | {t2 - t1:.2f} | {psnr(back, clip):.1f} |", flush=True)


if __name__ == "__main__":
    main()
