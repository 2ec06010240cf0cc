"""A whole miniature training step with the frozen encoders run live (`cache_layouts: 0`) against
one read from the encoding cache (`cache_layouts: 2`), with and without the subject-weighted
loss, in one run, on a small world dataset and
the miniature model with random weights (timing does not depend on them). The cache's one-off
cost (encoding every clip with its layouts) is printed per clip.

    python benchmarks/train_step.py [--clips 32] [--steps 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    from magref.pipeline import MagrefPipeline
    from magref.training.config import load_config
    from magref.training.trainer import Trainer
    from magref.world.build import build_world_dataset
    from magref.world.train import FRAMES, SIZE, miniature_components

    root = Path(tempfile.mkdtemp(prefix="magref-bench-"))
    build_world_dataset(root / "data", args.clips, "train", frames=FRAMES, height=SIZE, width=SIZE, cutout_frame=0, log=lambda *a: None)
    MagrefPipeline(**miniature_components()).save_pretrained(root / "base")
    times, build = {}, None
    rows = (("live encoders (cache_layouts: 0)", 0, 1.0), ("encoding cache (cache_layouts: 2)", 2, 1.0),
            ("encoding cache + subject_loss_weight: 5 (the miniature's recipe)", 2, 5.0))
    for i, (name, k, subject_weight) in enumerate(rows):
        cfg = {"model": str(root / "base"), "data": str(root / "data"), "output_dir": str(root / f"run{i}"), "batch_size": args.batch,
               "learning_rate": 1e-3, "first_frame": "clip", "cache_layouts": k, "layout": {"p_source_boxes": 0.5},
               "subject_loss_weight": subject_weight}
        (root / f"c{i}.yaml").write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        trainer = Trainer(load_config(root / f"c{i}.yaml"), log=lambda *a: None)
        if k and build is None:  # the first cached row builds the cache, the next reads it
            build = (time.perf_counter() - t) / args.clips
        trainer.train_step(0)  # warm-up
        t = time.perf_counter()
        for step in range(1, args.steps + 1):
            trainer.train_step(step)
        times[name] = (time.perf_counter() - t) / args.steps
    base = times["live encoders (cache_layouts: 0)"]
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {FRAMES} frames {SIZE}x{SIZE}, {args.steps} steps each")
    print("| step | s / step | speed-up |\n|---|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.3f} | {base / s:.2f}x |")
    print(f"cache build (one-off, includes loading the model): {build:.3f} s per clip")


if __name__ == "__main__":
    main()
