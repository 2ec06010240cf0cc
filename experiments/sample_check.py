"""Sample a `magref world train` run at one checkpoint on held-out 1-subject cases, with the
official grid layout and with the reference placed where a subject would start (the in-place
boxes half of the training layouts use), and score identity against 7 distractors.

    python experiments/sample_check.py ~/.cache/magref/w6 4000 [picture.png] [--cases 4] [--captions kind] [--guidance 5]

Prints one (layout, identity hit, margin) per video and the hit counts; the picture has two rows
per case (grid, then in place), frames 0..12 left to right, all frames kept.
"""

import argparse

import numpy as np
from PIL import Image

from magref.composition import RegionLayout
from magref.world.evaluate import eval_cases, generate_case, identity_match
from magref.world.identities import distractors_for
from magref.world.train import pipeline_from_run

IN_PLACE = RegionLayout.from_boxes([(18, 22, 46, 54)], 64, 64)  # about where a training subject starts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("step", type=int)
    ap.add_argument("picture", nargs="?")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--captions", default="kind", choices=["kind", "appearance"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=5.0)
    args = ap.parse_args()
    pipe = pipeline_from_run(args.run, args.step)
    pipe.set_progress_bar_config(disable=True)
    rows, hits = [], {"grid": [], "in place": []}
    for case in eval_cases(1, args.cases, caption_style=args.captions):
        for name, layout in (("grid", None), ("in place", IN_PLACE)):
            frames = generate_case(pipe, case, args.seed, 25, args.guidance, layout=layout, drop_first_frames=0)
            hit, margin = identity_match(frames[4:], case.ids[0], distractors_for(case.ids[0], 7, np.random.default_rng(0)))
            hits[name].append(hit)
            print(f"{case.prompt!r} id {case.ids[0]} {name}: hit {hit} margin {margin:.3f}")
            rows.append(np.concatenate(list(frames), 1))
    print({k: f"{sum(v)}/{len(v)}" for k, v in hits.items()})
    if args.picture:
        Image.fromarray(np.concatenate(rows, 0)).save(args.picture)


if __name__ == "__main__":
    main()
