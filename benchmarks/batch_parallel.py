"""Throughput of a batch: one process against 2 processes under torchrun, each making its own
videos (`--parallel items`) or splitting every video (`--parallel sequence`, Ulysses), in one run,
on the bundled miniature and its example references. Each process gets cores / processes threads.

    python benchmarks/batch_parallel.py [--items 8] [--processes 2]

On a GPU machine the same command measures GPUs (one per process); gloo on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFS = Path(__file__).resolve().parents[1] / "src" / "magref" / "assets" / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "batch.jsonl"
        batch.write_text("".join(json.dumps({"id": f"v{i}", "prompt": "a person walks to the right beside a mug", "seed": i,
                                             "refs": [str(REFS / "character.png"), str(REFS / "mug.png")]}) + "\n" for i in range(args.items)))
        cli = [sys.executable, "-m", "magref.cli", "batch", str(batch)]
        runs = {"1 process": ([*cli, "--out-dir", f"{tmp}/one"], {"OMP_NUM_THREADS": str(cores)})}
        for mode in ("items", "sequence"):
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), "--master_port", str(free_port()),
                        "-m", "magref.cli", "batch", str(batch), "--out-dir", f"{tmp}/{mode}", "--parallel", mode]
            runs[f"{args.processes} processes, --parallel {mode}"] = (torchrun, {"OMP_NUM_THREADS": str(max(1, cores // args.processes))})
        print(f"# {args.items} videos of the bundled miniature (2 references, its default settings), {cores} cores\n")
        print("| run | seconds | videos / min | speed-up |")
        print("|---|---|---|---|")
        base = None
        for name, (cmd, extra) in runs.items():
            seconds = timed(cmd, {**os.environ, **extra})
            base = base or seconds
            print(f"| {name} | {seconds:.1f} | {60 * args.items / seconds:.2f} | {base / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
