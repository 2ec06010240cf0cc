"""Videos longer than the trained length on the miniature: sliding context windows against the
one-pass baseline, on held-out identities.

    python benchmarks/long_video.py [--frames 49] [--cases 8] [--seeds 0 1] [--subjects 1] [--case-seed 2] [--model miniature]

For each case and seed, both methods make the same video (same noise); reported per method:
- identity top-1 (the world's learnt test, 7 distractors of the same kind) in each quarter of the
  kept frames: does the subject stay recognisable to the end?
- motion accuracy over the whole video (the caption's motion);
- flicker (mean absolute difference of consecutive frames, 0-255) at the pixel transitions where
  a window starts or ends, against all other transitions; for the one-pass baseline the same
  transitions are measured, as a control;
- seconds per video.
Prints a markdown table (mean ± standard error over cases x seeds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def seam_transitions(windows, num_frames: int, dropped: int) -> set[int]:
    """Indices t of kept-frame transitions t -> t+1 where a window starts or ends (latent frame k
    codes pixel frames 4k-3 .. 4k; frame 0 alone)."""
    latent = (num_frames - 1) // 4 + 1
    out = set()
    for span in windows.spans(latent):
        if span[0] > 1:
            out.add(4 * span[0] - 4 - dropped)
        if span[-1] < latent - 1:
            out.add(4 * span[-1] - dropped)
    return {t for t in out if t >= 0}


def save_strip(first: dict, path: str, every: int = 6, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    cell, label = 64 * scale, 90
    shown = {m: f[::every] for m, (_, f) in first.items()}
    width = label + cell * (1 + max(len(f) for f in shown.values()))
    sheet = Image.new("RGB", (width, cell * len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (method, frames) in enumerate(shown.items()):
        draw.text((6, r * cell + cell // 2), method, fill="black")
        sheet.paste(first[method][0].resize((cell, cell), Image.NEAREST), (label, r * cell))
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame).resize((cell, cell), Image.NEAREST), (label + cell * (c + 1), r * cell))
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="miniature")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--case-seed", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--strip", default=None, help="PNG: the first case's reference, then every 6th frame of each method, upscaled 4x")
    args = ap.parse_args()

    from magref.models import generation_defaults, load_pipeline
    from magref.pipeline import to_uint8_frames
    from magref.request import GenerationSettings
    from magref.world.evaluate import eval_cases, score_video, sprite_on_white
    from magref.world.identify import identifier_path, identify_video, identity_hit, load_identifier
    from magref.world.identities import distractors_for

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    defaults = generation_defaults(args.model)  # the model's frame size, trained length and guidance
    trained, size, guidance = defaults["frames"], defaults["height"], defaults["guidance"]
    windows = GenerationSettings(prompt="x", refs=["x"], frames=args.frames).context_windows(trained)
    judge = load_identifier(identifier_path(size))  # the identity test made for videos of this size
    dropped = 4
    seams = seam_transitions(windows, args.frames, dropped) if windows else set()
    print(f"{args.model}: {size} px, guidance {guidance}, {args.frames} frames (trained {trained}), windows {windows.to_dict() if windows else None}, "
          f"{args.cases} cases x {len(args.seeds)} seeds, {args.subjects} subject(s), case seed {args.case_seed}\n", flush=True)
    rows = {"one pass": [], "windows": []}
    first: dict = {}
    for case in eval_cases(args.subjects, args.cases, seed=args.case_seed):
        refs = [sprite_on_white(i, 96) for i in case.ids]
        for seed in args.seeds:
            for method, w in (("one pass", None), ("windows", windows)):
                t0 = time.perf_counter()
                out = pipe(prompt=case.prompt, references=refs, negative_prompt="", height=size, width=size, num_frames=args.frames,
                           num_inference_steps=args.steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                           output_type="np", context_windows=w)
                seconds = time.perf_counter() - t0
                frames = to_uint8_frames(out.frames[0])
                first.setdefault(method, (refs[0], frames))
                quarters = np.array_split(np.arange(len(frames)), 4)
                rng_others = np.random.default_rng([7, case.seed])
                others = {i: distractors_for(i, 7, rng_others) for i in case.ids}
                per_quarter = [float(np.mean([identity_hit(identify_video(judge, frames[q]), i, others[i])[0] for i in case.ids])) for q in quarters]
                diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
                seam = [diffs[t] for t in seams if t < len(diffs)]
                inner = [d for t, d in enumerate(diffs) if t not in seams]
                motion = score_video(frames, case, identifier=None)["motion_accuracy"]
                rows[method].append(dict(quarters=per_quarter, motion=motion, seam=float(np.mean(seam)) if seam else float("nan"),
                                         inner=float(np.mean(inner)), seconds=seconds))
                print(f"{case.ids} seed {seed} {method}: quarters {per_quarter} motion {motion} seam {rows[method][-1]['seam']:.2f} "
                      f"inner {rows[method][-1]['inner']:.2f} {seconds:.1f}s", flush=True)

    if args.strip:
        save_strip(first, args.strip)

    def ms(values):
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0:.3f}"

    print("\n| method | identity Q1 | Q2 | Q3 | Q4 | motion | flicker at seams | flicker inside | seams / inside | s per video | n |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, rs in rows.items():
        q = np.array([r["quarters"] for r in rs])
        ratio = np.array([r["seam"] / r["inner"] for r in rs])
        print(f"| {method} | " + " | ".join(ms(q[:, k]) for k in range(4)) + f" | {ms([r['motion'] for r in rs])} | {ms([r['seam'] for r in rs])} | "
              f"{ms([r['inner'] for r in rs])} | {ms(ratio)} | {np.mean([r['seconds'] for r in rs]):.1f} | {len(rs)} |")


if __name__ == "__main__":
    main()
