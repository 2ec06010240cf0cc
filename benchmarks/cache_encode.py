"""How fast the encoding cache is built with one example per encoder call against
`cache_encode_batch` examples per call, in one run, on a `world train` run's data (e.g.
~/.cache/magref/w128-single: 128 px, 2 layouts per clip). Nothing is written to the run.

    python benchmarks/cache_encode.py RUN [--clips 16] [--batches 1 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()

    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    cfg = load_config(str(Path(args.run).expanduser() / "dit.yaml"))
    cfg.output_dir, cfg.cache_encodings = tempfile.mkdtemp(), False  # encode live: the run's cache is neither read nor built
    t = Trainer(cfg, log=lambda *a: None)
    t.encode_clips([0, 1], cfg.cache_layouts)  # warm-up
    print(f"| examples per call | clips / s | vs the first row |  ({cfg.cache_layouts} layouts a clip, {t.device})\n|---|---|---|")
    first = None
    for b in args.batches:
        t.cfg.cache_encode_batch = b
        t0 = time.perf_counter()
        t.encode_clips(list(range(8, 8 + args.clips)), cfg.cache_layouts)
        rate = args.clips / (time.perf_counter() - t0)
        first = first or rate
        print(f"| {b} | {rate:.2f} | {rate / first:.2f}x |")


if __name__ == "__main__":
    main()
