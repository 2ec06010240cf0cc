"""How far does more subject-weighted tuning lift the VAE's identity ceiling? A scouting run
for the miniature world's VAE: continue the `subjects` stage (VAE_STAGES) from a saved state
on any device, with a larger batch, for a fixed time, measuring the ceiling as it goes.

    python experiments/vae_scout.py VAE_DIR STATE SECONDS [--batch 8] [--every 500] [--device cuda] [--out DIR]
    python experiments/vae_scout.py VAE_DIR STATE 0 --steps 850 --anneal --batch 2 --workers 0 --out DIR   # CPU

VAE_DIR: the stage's source folder (config and weights); STATE: its `subjects_state.pt`.
Clips are rendered by a process pool (the world is numpy/PIL), so the GPU is not starved.
Not the shipped recipe (that is `magref world train`, on a 2-core CPU): this says whether the
VAE's capacity or its training time is what keeps the ceiling low.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_subject_check import identity_ceiling  # noqa: E402

from magref.world.train import VAE_STAGES, cosine_to_tenth, load_state, stage_loss, world_frames  # noqa: E402


def batch_of(args):
    seed, step, batch = args
    x, m = world_frames(np.random.default_rng([seed, step]), batch, 13, with_masks=True)
    return x.numpy(), m.numpy()  # numpy pickles plainly; torch tensors would travel as shared file descriptors


def clip_batches(pool, seed_batch, start, ahead):
    """Training batches in step order, rendered `ahead` steps in advance by the pool (or here,
    without one). Bounded: Pool.imap would render the whole endless sequence into memory."""
    seed, batch = seed_batch
    pending, step = [], start
    while True:
        if pool is None:
            yield batch_of((seed, step, batch))
        else:
            while len(pending) < ahead:
                pending.append(pool.apply_async(batch_of, ((seed, step + len(pending), batch),)))
            yield pending.pop(0).get()
        step += 1


def ceiling(vae) -> dict:
    vae.eval()
    out = identity_ceiling(vae)  # encodes and decodes without gradients itself
    vae.train()
    return {split: r["decoded top-1"] for split, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vae_dir")
    ap.add_argument("state")
    ap.add_argument("seconds", type=float)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=12, help="clip-rendering processes (0: render between steps)")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (else after SECONDS)")
    ap.add_argument("--anneal", action="store_true", help="cosine decay of the LR to a tenth over --steps")
    ap.add_argument("--first", action="store_true", help="also measure the ceiling before training")
    ap.add_argument("--out", default=None, help="folder for the final weights and the log")
    args = ap.parse_args()
    from diffusers import AutoencoderKLWan

    cfg = VAE_STAGES["subjects"]
    device = torch.device(args.device)
    pool = Pool(args.workers, initializer=torch.set_num_threads, initargs=(1,)) if args.workers else None  # forked before CUDA starts in this process
    vae = AutoencoderKLWan.from_pretrained(args.vae_dir)
    state = load_state(Path(args.state))
    vae.load_state_dict(state["vae"])
    start = int(state["step"])
    vae.to(device).train()
    log = [{"step": start, "samples": 0, "ceiling": ceiling(vae) if args.first else None}]
    print(json.dumps(log[-1]), flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    opt.load_state_dict(state["opt"])  # moments follow the parameters' device on the first step
    if args.anneal and not args.steps:
        ap.error("--anneal needs --steps")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_to_tenth(args.steps) if args.anneal else (lambda s: 1.0))
    t0, step, samples = time.time(), start, 0
    batches = clip_batches(pool, (cfg["seed"] + 100, args.batch), start, ahead=2 * args.workers)
    while (step - start < args.steps) if args.steps else (time.time() - t0 < args.seconds):
        x, masks = (torch.from_numpy(t).to(device) for t in next(batches))
        loss = stage_loss(vae, cfg, x, masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step, samples = step + 1, samples + args.batch
        if (step - start) % args.every == 0:
            log.append({"step": step, "samples": samples, "loss": loss.item(), "seconds": round(time.time() - t0),
                        "ceiling": ceiling(vae)})
            print(json.dumps(log[-1]), flush=True)
    if pool:
        pool.terminate()
    log.append({"step": step, "samples": samples, "loss": loss.item(), "seconds": round(time.time() - t0), "ceiling": ceiling(vae)})
    print(json.dumps(log[-1]), flush=True)
    if args.out:
        out = Path(args.out)
        vae.save_pretrained(out / "vae")
        (out / "scout.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
