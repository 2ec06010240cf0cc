"""Context parallelism across N processes against one process, in one run.

    torchrun --nproc_per_node 8 benchmarks/context_parallel.py   # 8 GPUs: the 14B at 480x832x81
    torchrun --nproc_per_node 2 benchmarks/context_parallel.py   # CPU (gloo): the scaled model; runs the path, not a speed figure

Every rank builds the same transformer with random weights (speed.build: seeded). Rank 0 first
times a denoising step alone (both guidance branches in one batch, as `--preset fast` runs
them) while the others wait; then all ranks time the same step with the sequence split across
them by diffusers' Ulysses attention (`acceleration.enable_context_parallel`, what `torchrun ...
magref.cli generate` uses). Printed by rank 0: seconds per step, the speed-up and the scaling
efficiency (speed-up / N), and the largest difference between the split and the single output.
`--compile` adds the fast preset's regional compile to both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import build, failure, guided_pair, inputs, setting, step_flops, sync  # noqa: E402


def timed(model, x, text, image, device, repeats: int) -> tuple[float, torch.Tensor]:
    """(seconds per step, the step's output): one warm-up, then `repeats` timed steps."""
    out = guided_pair(model, x, text, image)  # warm-up (and compilation)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        guided_pair(model, x, text, image)
    sync(device)
    return (time.perf_counter() - t0) / repeats, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="GPU: regional compile of the blocks (the fast preset), in both rows")
    args = ap.parse_args()

    from magref import acceleration as acc

    rank, world = acc.init_distributed_from_env()
    if world < 2:
        sys.exit("context_parallel.py compares N processes with one: launch it with torchrun --nproc_per_node N (N >= 2).")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    dtype, cfg, (frames, height, width), name, peak = setting(device)

    model = build(cfg, device, dtype)
    if args.compile and gpu:
        acc.compile_blocks(model)
    x, text, image, tokens = inputs(cfg, frames, height, width, device, dtype)
    flops = 2 * step_flops(cfg, tokens)
    say = print if rank == 0 else (lambda *a, **k: None)
    import diffusers

    say(f"\ndevice: {world} x {name} (per process); torch {torch.__version__}, diffusers {diffusers.__version__}; transformer "
        f"{'real 14B' if gpu else 'scaled'} config, {dtype}; video {width}x{height}x{frames} -> {tokens} tokens; "
        f"{flops / 1e12:.2f} TFLOP per step; {'regional compile' if args.compile and gpu else 'eager'}, both guidance branches batched\n")
    single = None
    if rank == 0:
        single = timed(model, x, text, image, device, args.repeats)
    dist.barrier()

    class P:  # the one attribute enable_context_parallel needs
        transformer = model

    try:
        acc.enable_context_parallel(P)
        seconds, out = timed(model, x, text, image, device, args.repeats)
        error = None
    except Exception as e:  # noqa: BLE001 - reported as the row's text
        seconds, out, error = None, None, failure(e)
    if rank != 0:
        return
    one_s, one_out = single
    mfu = lambda s: f"{flops / s / 1e12 / peak:.1%}" if peak else "n/a (CPU)"  # noqa: E731
    print("| processes | s / step | speed-up | scaling efficiency | MFU per device | max abs diff vs 1 process |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 | {one_s:.3f} | 1.00x | 100% | {mfu(one_s)} | 0 |")
    if error:
        print(f"| {world} (Ulysses) | failed: {error} | | | | |")
        return
    diff = (out - one_out).abs().max().item()
    speedup = one_s / seconds
    print(f"| {world} (Ulysses) | {seconds:.3f} | {speedup:.2f}x | {speedup / world:.0%} | {mfu(seconds * world)} | {diff:.3e} |")


if __name__ == "__main__":
    try:
        main()
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
