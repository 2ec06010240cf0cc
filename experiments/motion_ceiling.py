"""The motion ceiling of `world evaluate`: its own cases (a case seed), rendered as the miniature is
trained and sampled (13 frames, of which a video shows the last 9) and decoded by the VAE, scored
by `world evaluate`'s metrics (motion accuracy, both identity tests). Beside them, the truth rows of
`world evaluate` (9 rendered frames over the whole motion).

    python experiments/motion_ceiling.py --case-seed 31 [--size 128] [--cases 24] [--seeds 0 1]

It asks how much of the motion a model could show: the VAE keeps a latent frame per 4 video
frames, and a video drops the first 4 of 13, so part of a jump or a slow move is not in it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case-seed", type=int, default=31)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--vae", default=None)
    args = ap.parse_args()

    from diffusers import AutoencoderKLWan

    from magref.models import WORLD_VAE_PATH
    from magref.world.clips import make_clip
    from magref.world.evaluate import eval_cases, score_video, truth_case
    from magref.world.identify import identifier_path, load_identifier, vae_round_trip
    from magref.world.render import identity

    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan.from_pretrained(args.vae or str(WORLD_VAE_PATH), torch_dtype=torch.float32).eval()
    judge = load_identifier(identifier_path(args.size))
    rows = {name: {1: [], 2: [], 3: []} for name in ("truth (9 frames)", "13 frames, last 9", "13 frames decoded, last 9")}
    for k in (1, 2, 3):
        for case in eval_cases(k, args.cases, seed=args.case_seed):
            for s in args.seeds:
                clip = make_clip([identity(i) for i in case.ids], np.random.default_rng([case.seed, s]), frames=13, height=args.size,
                                 width=args.size, motions=case.motions, scene=case.scene).frames
                decoded = vae_round_trip(vae, clip[None])[0]
                for name, frames in zip(rows, (truth_case(case, s, size=args.size), clip[4:], decoded[4:])):
                    r = score_video(frames, case, identifier=judge)
                    rows[name][k].append((r["motion_accuracy"], r["identity_learnt_top1"]))
    print(f"case seed {args.case_seed}, {args.cases} cases x {len(args.seeds)} seeds per subject count: motion accuracy / learnt top-1")
    print("| frames | 1 subject | 2 subjects | 3 subjects |\n|---|---|---|---|")
    for name, by in rows.items():
        cells = []
        for k in (1, 2, 3):
            v = np.asarray(by[k])
            se = v.std(0, ddof=1) / np.sqrt(len(v))
            cells.append(f"{v[:, 0].mean():.2f} ± {se[0]:.2f} / {v[:, 1].mean():.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
