"""Does a model compose several subjects when the canvas says unambiguously where each one goes?

With 2-3 subjects the world puts subject k in lane k (left to right). The training layouts are
half in place (each cut-out where its subject starts) and half random or official grids whose
cell order is shuffled, so for those the canvas does not say which lane a reference goes to. A
model that cannot tell would average the identities over the lanes. This samples the same cases
as `world evaluate` with one of:

- `inplace`: the reference boxes are the subjects' own boxes in frame 0 of the case's truth clip
  (what the in-place half of training showed; it reads the truth's placement, a diagnostic only);
- `grid`: the official grid (what `world evaluate` does), for a control in the same run.

    python experiments/layout_check.py MODEL OUT --layout inplace [--subjects 2 3] [--cases 8] [--seeds 0 1] \
        [--case-seed 7] [--guidance 1.5]

OUT is a `world evaluate` folder, so `magref world compare OUT OTHER` pairs it with the grid run.
"""

import argparse
from pathlib import Path

import numpy as np

import magref.world.evaluate as ev
from magref.composition import RegionLayout
from magref.data.extract import mask_bbox
from magref.world.clips import make_clip
from magref.world.render import identity


def inplace_layout(case, seed: int, size: int) -> RegionLayout:
    """The boxes of the case's subjects in frame 0 of its truth clip (truth_case's random draws)."""
    clip = make_clip([identity(i) for i in case.ids], np.random.default_rng([case.seed, seed]), frames=1, height=size, width=size,
                     motions=case.motions, scene=case.scene)
    return RegionLayout.from_boxes([mask_bbox(m[0]) for m in clip.masks], size, size)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--layout", choices=["inplace", "grid"], default="inplace")
    p.add_argument("--subjects", type=int, nargs="+", default=[2, 3])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--case-seed", type=int, default=7)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args()
    plain = ev.generate_case

    def placed_case(pipe, case, seed, steps, guidance, size=64, **kw):
        layout = inplace_layout(case, seed, size) if a.layout == "inplace" else None
        return plain(pipe, case, seed, steps, guidance, size=size, layout=layout, **kw)

    ev.generate_case = placed_case
    name = a.model.rstrip("/").split("/")[-1] + f"-{a.layout}"
    ev.evaluate({name: a.model}, a.out, subjects=tuple(a.subjects), cases=a.cases, seeds=tuple(a.seeds), steps=a.steps,
                guidance=a.guidance, truth=False, case_seed=a.case_seed, device="cpu")
    print((Path(a.out) / "table.md").read_text())


if __name__ == "__main__":
    main()
