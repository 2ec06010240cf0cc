"""Step caches on trained weights: what each one costs the bundled miniature MAGREF's videos.

On random weights a cache's output difference says nothing about a video; the miniature is
trained, and the world has a learnt identity test (world.identify), so here each cache is judged
by what the user would see: is the held-out subject of the reference still recognised, how far
is the video from the uncached one (PSNR), and how many full transformer passes it ran.

    python benchmarks/cache_quality.py                         # 8 cases x 2 seeds, 1 subject
    python benchmarks/cache_quality.py --cases 4 --seeds 0     # quicker

Every video is one `MagrefPipeline` call as `magref world evaluate` makes it (25 steps, CFG 5).
MagCache calibrates on one extra video first (case 0, seed 99), as the CLI does on a model's
first video, then reuses its ratios on the scored ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np

VARIANTS = {  # label: (cache, params)
    "no cache": ("none", {}),
    "fbcache 0.05": ("fbcache", {"threshold": 0.05}),
    "magcache 0.06": ("magcache", {"threshold": 0.06}),
    "magcache 0.12": ("magcache", {"threshold": 0.12}),
    "taylorseer every 2": ("taylorseer", {"cache_interval": 2}),
    "taylorseer every 3": ("taylorseer", {"cache_interval": 3}),
    "taylorseer every 5": ("taylorseer", {"cache_interval": 5}),
}


def psnr(mse: float) -> float:
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--subjects", type=int, default=1, help="held-out subjects per video (the miniature composes one well)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    args = ap.parse_args()

    import torch

    from magref import acceleration as acc
    from magref.models import load_pipeline
    from magref.schedulers import solver_name
    from magref.world.evaluate import eval_cases, generate_case, score_video
    from magref.world.identify import IDENTIFIER_PATH, load_identifier

    torch.manual_seed(0)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    judge = load_identifier(IDENTIFIER_PATH)
    cases = eval_cases(args.subjects, args.cases, seed=2)
    passes = {"n": 0}
    block, inner = pipe.transformer.blocks[-1], pipe.transformer.blocks[-1].forward

    def counted(*a, **k):  # a full pass reaches the last block; a skipped step does not
        passes["n"] += 1
        return inner(*a, **k)

    block.forward = counted
    shift, solver = pipe.scheduler.config.flow_shift, solver_name(pipe.scheduler)
    print(f"miniature MAGREF, {args.subjects} held-out subject(s), {args.cases} cases x {len(args.seeds)} seeds, "
          f"{args.steps} steps, {solver} shift {shift:g}\n")
    print("| cache | learnt identity top-1 | learnt margin (logits) | PSNR vs no cache (dB) | full passes / video | seconds / video |")
    print("|---|---|---|---|---|---|")
    reference: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAGREF_CACHE_DIR"] = tmp  # MagCache's ratios for this run only
        for label in args.variants.split(","):
            kind, params = VARIANTS[label]

            def cached():
                if kind == "magcache":
                    return acc.mag_cache(pipe, "cache-quality", args.steps, shift, solver, threshold=params["threshold"])
                acc.enable_step_cache(pipe, kind, **params)
                return contextlib.nullcontext()

            if kind == "magcache" and not acc.mag_ratios_path("cache-quality", args.steps, shift, solver).is_file():
                with cached():  # the calibrating video
                    generate_case(pipe, cases[0], 99, args.steps, 5.0)
            hits, margins, mses, n_passes, seconds = [], [], [], [], []
            for case in cases:
                for seed in args.seeds:
                    passes["n"] = 0
                    t0 = time.perf_counter()
                    with cached():
                        frames = generate_case(pipe, case, seed, args.steps, 5.0)
                    acc.disable_step_cache(pipe)
                    seconds.append(time.perf_counter() - t0)
                    n_passes.append(passes["n"])
                    scores = score_video(frames, case, identifier=judge)  # as `world evaluate` scores it
                    hits.append(scores["identity_learnt_top1"])
                    margins.append(scores["identity_learnt_margin"])
                    key = (case.seed, tuple(case.ids), seed)
                    if kind == "none":
                        reference[key] = frames
                    if key in reference:
                        mses.append(np.mean((frames.astype(np.float64) - reference[key]) ** 2))
            se = np.std(margins, ddof=1) / np.sqrt(len(margins)) if len(margins) > 1 else 0.0
            p = f"{psnr(np.mean(mses)):.1f}" if mses else "n/a"  # of the mean squared error over all videos
            print(f"| {label} | {np.mean(hits):.3f} | {np.mean(margins):+.2f} ± {se:.2f} | {p} | {np.mean(n_passes):.1f} | "
                  f"{np.mean(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
