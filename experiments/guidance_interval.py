"""Classifier-free guidance applied in part of the denoising only (a guidance interval): does the
miniature keep identity as guidance 1 does and follow the motion as guidance 5 does?

Guidance here drops the caption alone (the canvas stays in both passes, as in the official
sampler), so it pushes towards what the text says (motion, scene) and away from what only the
canvas says. Steps outside the interval use the unconditional pass = the conditional one, i.e.
guidance 1: done through the pipeline's `callback_on_step_end`, which may replace the negative
prompt embeddings, so the product sampler is not touched.

    python experiments/guidance_interval.py MODEL OUT --guidance 5 --first 0.0 --last 0.4 \
        [--subjects 1 2] [--cases 24] [--case-seed 11]

LAST: the share of the steps, from the first (noisiest), that are guided (--first must be 0 in
this sketch). OUT is a
`world evaluate`-style folder (results.jsonl, table.md), so `magref world compare` reads it.
"""

import argparse

import magref.world.evaluate as ev


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--first", type=float, default=0.0)
    p.add_argument("--last", type=float, default=1.0)
    p.add_argument("--subjects", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--case-seed", type=int, default=11)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args()
    if not 0 < a.last <= 1:
        raise SystemExit("--last: the guided share of the steps, in (0, 1]")
    if a.first != 0:  # step 0 runs before any callback, with the negative prompt the pipeline encoded
        raise SystemExit("this callback-based sketch guides the first steps only: --first 0")
    plain = ev.generate_case

    def interval_case(pipe, case, seed, steps, guidance, **kw):
        last, negative = round(a.last * steps), {}

        def callback(pipe_, i, t, tensors):  # runs after step i: sets what step i + 1 uses
            negative.setdefault("embeds", tensors["negative_prompt_embeds"])
            return {"negative_prompt_embeds": negative["embeds"] if i + 1 < last else tensors["prompt_embeds"]}

        return plain(pipe, case, seed, steps, guidance, callback_on_step_end=callback,
                     callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"], **kw)

    ev.generate_case = interval_case
    ev.evaluate({f"g{a.guidance}@[{a.first},{a.last})": a.model}, a.out, subjects=tuple(a.subjects), cases=a.cases, seeds=(0,),
                steps=a.steps, guidance=a.guidance, truth=False, case_seed=a.case_seed, device="cpu")
    print((__import__("pathlib").Path(a.out) / "table.md").read_text())


if __name__ == "__main__":
    main()
