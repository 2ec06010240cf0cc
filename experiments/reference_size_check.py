"""Are the single subjects a model misses missed because its references look unlike the training ones?

Training references are cut-outs of the clip's first frame (`world train`): the sprite drawn at
twice the clip's base size and shrunk bilinearly to 40-70 px (128 px clips), as `make_clip` pastes it. `world
evaluate` gives the model the held-out sprite drawn at 96 px (Lanczos from a 4x supersample), which
is sharper, so its fine patterns (dots, checks) are something the model never saw in a canvas.
This samples the same cases as `world evaluate` with each reference drawn as a training cut-out of
`--ref-px` pixels instead (`--ref-px 0`: the default 96 px sprite, a control in the same run):

    python experiments/reference_size_check.py MODEL OUT --ref-px 56 [--subjects 1] [--cases 24] [--seeds 0 1] \
        [--case-seed 43] [--guidance 1.5]

OUT is a `world evaluate` folder, so `magref world compare OUT OTHER` pairs it with the control.
"""

import argparse
from pathlib import Path

from PIL import Image

import magref.world.evaluate as ev
from magref.composition import to_rgb_on_white
from magref.world.render import identity, render_subject


def cutout_like_sprite(identity_id: int, px: int) -> Image.Image:
    """The identity as `make_clip` pastes it at `px` pixels, on white (what a cut-out shows)."""
    sprite = render_subject(identity(identity_id), size=2 * px)
    return to_rgb_on_white(sprite.resize((px, px), Image.Resampling.BILINEAR))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--ref-px", type=int, default=56, help="the references' size as training cut-outs; 0: world evaluate's 96 px sprites")
    p.add_argument("--subjects", type=int, nargs="+", default=[1])
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--case-seed", type=int, default=43)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args()
    if a.ref_px:
        ev.sprite_on_white = lambda i, size=64: cutout_like_sprite(i, a.ref_px)  # generate_case's references, and the sheets'
    name = a.model.rstrip("/").split("/")[-1] + (f"-ref{a.ref_px}" if a.ref_px else "")
    ev.evaluate({name: a.model}, a.out, subjects=tuple(a.subjects), cases=a.cases, seeds=tuple(a.seeds), steps=a.steps,
                guidance=a.guidance, truth=False, case_seed=a.case_seed, device="cpu")
    print((Path(a.out) / "table.md").read_text())


if __name__ == "__main__":
    main()
