"""Issue 27's CPU measurements in one run: preparing clips with 1 and 2 worker processes, and what
storing clips as H.264 instead of raw frames does to training (the decode cost per step, and the
loss of the same steps from the same seed), on procedural world videos with ground-truth masks.

    python benchmarks/data_scale.py [--videos 16] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def world_videos(folder: Path, n: int, frames: int, height: int, width: int) -> None:
    """`n` world clips as mp4, each with its caption and its subjects' masks (the `masks` extractor's sidecar)."""
    from magref.io import write_video
    from magref.world import identity, make_clip
    from magref.world.identities import identity_ids

    pool = identity_ids("train")
    for k in range(n):
        rng = np.random.default_rng([5, k])
        ids = [int(i) for i in rng.choice(pool, size=int(rng.integers(1, 3)), replace=False)]
        clip = make_clip([identity(i) for i in ids], rng, frames, height, width)
        write_video(folder / f"w{k:03d}.mp4", clip.frames, 8.0)
        (folder / f"w{k:03d}.txt").write_text(clip.caption)
        kinds = np.array(["person" if i.kind == "character" else "object" for i in clip.identities])
        np.savez_compressed(folder / f"w{k:03d}.masks.npz", masks=clip.masks, kinds=kinds)


def prepare(videos: Path, out: Path, workers: int, codec: str, size: tuple[int, int, int]) -> float:
    frames, height, width = size
    cmd = [sys.executable, "-m", "magref.cli", "prepare", str(videos), str(out), "--extractor", "masks", "--clip-codec", codec, "--workers", str(workers),
           "--frames", str(frames), "--height", str(height), "--width", str(width), "--fps", "8", "--samples-per-shard", "4"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))})
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def train(data: Path, out: Path, steps: int) -> tuple[list[float], float]:
    """`steps` miniature steps from seed 0 (live encoders, so every step decodes its clips): losses and s/step."""
    import yaml

    from magref.models import MINIATURE
    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    cfg = out.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump({"model": MINIATURE, "data": str(data), "output_dir": str(out), "seed": 0, "max_steps": steps, "batch_size": 2,
                                   "learning_rate": 1e-4, "checkpoint_every": steps, "first_frame": "clip", "caption_dropout": 0.0}))
    trainer = Trainer(load_config(str(cfg)), log=lambda *a: None)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        losses.append(trainer.train_step(step))
    return losses, (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos").mkdir()
        world_videos(tmp / "videos", args.videos, 40, 240, 416)
        print(f"# {args.videos} world videos (40 frames, 240x416), {os.cpu_count()} cores\n")
        print("| prepare (17 frames at 240x416, h264) | seconds | clips / s | speed-up |\n|---|---|---|---|")
        base = None
        for workers in (1, 2):
            seconds = prepare(tmp / "videos", tmp / f"p{workers}", workers, "h264", (17, 240, 416))
            clips = json.loads((tmp / f"p{workers}" / "manifest.json").read_text())["num_samples"]
            base = base or seconds
            print(f"| {workers} process(es) | {seconds:.1f} | {clips / seconds:.2f} | {base / seconds:.2f}x |", flush=True)
        print("\n| training the miniature from the same seed (13 frames at 64x64) | bytes / clip | s / step | mean loss | max loss difference vs raw |")
        print("|---|---|---|---|---|")
        rows = {}
        for codec in ("raw", "h264"):
            prepare(tmp / "videos", tmp / codec, 1, codec, (13, 64, 64))
            shards = list((tmp / codec).glob("shard-*.tar"))
            clips = json.loads((tmp / codec / "manifest.json").read_text())["num_samples"]
            losses, per_step = train(tmp / codec, tmp / f"run-{codec}", args.steps)
            rows[codec] = losses
            diff = max(abs(a - b) for a, b in zip(losses, rows["raw"]))
            size = sum(p.stat().st_size for p in shards) / clips / 1e3
            print(f"| {codec} | {size:.1f} kB | {per_step:.3f} | {np.mean(losses):.4f} | {diff:.4f} |", flush=True)


if __name__ == "__main__":
    main()
