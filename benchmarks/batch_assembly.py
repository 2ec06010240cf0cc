"""How fast training batches come out of the encoding cache, without the model step (can the data
path feed a GPU at a larger batch?): batches of each size timed in one run, on a `world train`
run's data and cache (e.g. ~/.cache/magref/w128-single, 128 px, subject-weighted loss).

    python benchmarks/batch_assembly.py RUN [--batches 8 64] [--steps 20]

One pass over the clips first, so the shards are in the OS cache for every row alike.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    cfg = load_config(str(Path(args.run).expanduser() / "dit.yaml"))
    cfg.output_dir, cfg.batch_size = tempfile.mkdtemp(), max(args.batches)
    t = Trainer(cfg, log=lambda *a: None)
    rng = random.Random(0)
    for s in range(-(-len(t.dataset) // cfg.batch_size)):
        t.batch(s, rng)
    print("| batch | ms / batch | samples / s | samples / s vs the first row |\n|---|---|---|---|")
    first = None
    for b in args.batches:
        t.cfg.batch_size = b
        t0 = time.perf_counter()
        for s in range(args.steps):
            t.batch(1000 + s, rng)
        dt = (time.perf_counter() - t0) / args.steps
        first = first or b / dt
        print(f"| {b} | {dt * 1000:.1f} | {b / dt:.0f} | {b / dt / first:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
