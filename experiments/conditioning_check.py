"""How much a `magref world train` transformer uses its conditioning: the MSE of its flow
prediction on training clips with the true condition, with the reference canvas removed (an
empty white canvas, zero mask), with an empty caption and with another clip's caption; and the MSE inside the reference regions of
latent frame 0 alone, where the canvas says most (with `p_source_boxes` the subject is there),
and inside the subjects' cells of latent frames 1 on (the frames a MAGREF video keeps; needs the
data's per-frame masks), also with the canvas recoloured (its channels permuted: same shapes and
places, other colours), which tells whether the model reads the reference's appearance.

    python experiments/conditioning_check.py ~/.cache/magref/world 1200 [DATA]

DATA: another dataset in the run's format (default: the run's own training clips), e.g. fresh
clips of the same world (`build_world_dataset(..., seed=1, frames=13, cutout_frame=0)`).

If removing the canvas costs next to nothing, the model has not learnt to use the references.
"""

import random
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from magref.training.config import load_config
from magref.training.flow import latent_subject_mask
from magref.training.trainer import Trainer


def main(run: str, step: int, n: int = 8, data: str | None = None) -> None:
    run = Path(run).expanduser()
    cfg = load_config(str(run / "dit.yaml"))
    if data:  # e.g. clips the model never saw, to tell learning from remembering
        cfg.data = str(Path(data).expanduser())
    cfg.output_dir = str(run / "conditioning-check")  # the Trainer wants one; nothing is trained
    cfg.cache_layouts = 0  # 8 clips are encoded live; never build (or rebuild) the run's cache for them
    t = Trainer(cfg)
    t.transformer.load_state_dict(load_file(run / "dit" / "checkpoints" / f"step-{step:07d}" / "trainable.safetensors"))
    t.transformer.eval()
    ex = [t.example(i, random.Random(i)) for i in range(n)]
    true = t.encode(ex)
    blank = t.encode([dict(e, canvas=torch.ones_like(e["canvas"]), latent_mask=torch.zeros_like(e["latent_mask"])) for e in ex])
    # the same shapes at the same places in other colours (white stays white): is the appearance read?
    recoloured = t.encode([dict(e, canvas=e["canvas"][[2, 0, 1]]) for e in ex])
    empty = t.encode([dict(e, caption="") for e in ex])
    other = t.encode([dict(e, caption=ex[(k + 1) % n]["caption"]) for k, e in enumerate(ex)])
    x0 = true["x0"]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    region = true["condition"][:, :1, :1] > 0.5  # (n, 1, 1, h, w): the reference mask on latent frame 0
    masks = [t.dataset.masks(i) for i in range(n)]
    later = None  # (n, 1, T-1, h, w): where the subjects are in latent frames 1..T-1
    if all(m is not None for m in masks):
        later = torch.stack([latent_subject_mask(m, t.pipe.vae_scale_factor_temporal, t.pipe.vae_scale_factor_spatial) for m in masks])[:, None, 1:] > 0.5
    print("| sigma | true condition | blank canvas | empty caption | other caption | regions, true | regions, blank canvas "
          "| regions, recoloured canvas | subjects in frames 1+, true | subjects in frames 1+, blank canvas | subjects in frames 1+, recoloured canvas |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for s in (0.3, 0.6, 0.9, 0.99):
        xt, target = (1 - s) * x0 + s * noise, noise - x0

        def mse(cond, text, image, where=None):
            with torch.no_grad():
                pred = t.predict(xt, torch.full((n,), s * 1000), {"condition": cond, "text": text, "image_embeds": image})
            err = (pred - target) ** 2
            if where == "regions":
                err = err[:, :, :1].masked_select(region.expand_as(err[:, :, :1]))
            elif where == "later":
                if later is None:
                    return float("nan")
                err = err[:, :, 1:].masked_select(later.expand_as(err[:, :, 1:]))
            return err.mean().item()

        cells = [mse(true["condition"], true["text"], true["image_embeds"]), mse(blank["condition"], true["text"], blank["image_embeds"]),
                 mse(true["condition"], empty["text"], true["image_embeds"]), mse(true["condition"], other["text"], true["image_embeds"]),
                 mse(true["condition"], true["text"], true["image_embeds"], "regions"), mse(blank["condition"], true["text"], blank["image_embeds"], "regions"),
                 mse(recoloured["condition"], true["text"], recoloured["image_embeds"], "regions"),
                 mse(true["condition"], true["text"], true["image_embeds"], "later"), mse(blank["condition"], true["text"], blank["image_embeds"], "later"),
                 mse(recoloured["condition"], true["text"], recoloured["image_embeds"], "later")]
        print(f"| {s} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), data=sys.argv[3] if len(sys.argv) > 3 else None)
