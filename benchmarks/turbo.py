"""`--preset turbo` on the bundled miniature, beside the quality preset: what few-step,
guidance-free sampling does to a base model that was never step-distilled.

    python benchmarks/turbo.py [--cases 16] [--seeds 0] [--subjects 1] [--case-seed 2] [--strip docs/turbo-miniature.png]

There is no distilled LoRA for the miniature, so this measures a fast draft against the real
thing, not a quality claim: per preset, identity top-1 of the held-out subject (the world's
learnt test, 7 distractors), motion accuracy, transformer passes and seconds per video, all in
one run (mean ± standard error over cases x seeds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from long_video import save_strip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="miniature")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--case-seed", type=int, default=2)
    ap.add_argument("--strip", default=None, help="PNG: the first case's reference, then every 2nd frame of each preset, upscaled 4x")
    args = ap.parse_args()

    from magref.defaults import TURBO_SETTINGS
    from magref.models import generation_defaults, load_pipeline
    from magref.pipeline import to_uint8_frames
    from magref.world.evaluate import eval_cases, score_video, sprite_on_white
    from magref.world.identify import load_identifier

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    d = generation_defaults(args.model)
    presets = {"quality": dict(steps=d["steps"], guidance=d["guidance"], shift=d["shift"], solver=d["solver"]), "turbo": TURBO_SETTINGS}
    passes = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: passes.append(1))
    judge = load_identifier()
    rows: dict[str, list] = {p: [] for p in presets}
    first: dict = {}
    print(f"{args.model}: {args.cases} cases x {len(args.seeds)} seeds, {args.subjects} subject(s), case seed {args.case_seed}; "
          f"presets {presets}\n", flush=True)
    for case in eval_cases(args.subjects, args.cases, seed=args.case_seed):
        refs = [sprite_on_white(i, 96) for i in case.ids]
        for seed in args.seeds:
            for name, s in presets.items():
                passes.clear()
                t0 = time.perf_counter()
                out = pipe(prompt=case.prompt, references=refs, negative_prompt="", height=d["height"], width=d["width"], num_frames=d["frames"],
                           num_inference_steps=s["steps"], guidance_scale=s["guidance"], shift=s["shift"], solver=s["solver"],
                           generator=torch.Generator().manual_seed(seed), output_type="np")
                seconds = time.perf_counter() - t0
                frames = to_uint8_frames(out.frames[0])
                first.setdefault(name, (refs[0], frames))
                score = score_video(frames, case, identifier=judge)
                rows[name].append(dict(identity=score["identity_learnt_top1"], motion=score["motion_accuracy"], passes=len(passes), seconds=seconds))
                print(f"{case.ids} seed {seed} {name}: {rows[name][-1]}", flush=True)
    if args.strip:
        save_strip(first, args.strip, every=2)

    def ms(values):
        v = np.asarray(values, float)
        return f"{v.mean():.3f} ± {v.std() / np.sqrt(len(v)):.3f}"

    print("\n| preset | identity top-1 | motion accuracy | transformer passes | seconds / video |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {ms([x['identity'] for x in r])} | {ms([x['motion'] for x in r])} | {np.mean([x['passes'] for x in r]):.0f} | "
              f"{ms([x['seconds'] for x in r])} |")
    q, t = np.mean([x["seconds"] for x in rows["quality"]]), np.mean([x["seconds"] for x in rows["turbo"]])
    print(f"\nturbo is {q / t:.1f}x faster per video than quality in this run (n = {len(rows['turbo'])}).")


if __name__ == "__main__":
    main()
