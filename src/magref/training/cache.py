"""Frozen-encoder outputs of a dataset, computed once (`cache_layouts: K` in a training config).

The VAE and CLIP work of a step (target latent, canvas condition, CLIP features) is the same
every epoch but for the layout draw, and on a CPU it costs about four times the miniature
transformer's forward and backward. With K > 0 every clip gets K layouts, drawn once and seeded
by (seed, clip, k); a step picks one of them. Captions stay live (caption dropout, and the text
encoder is cheap).

Stored as safetensors parts of PART clips in `<data>/encodings/<key>/`, where the key hashes the
encoders' weights and every setting that shapes an encoding: runs that share data and encoders
(the miniature world's ablations) share one cache, a changed setting never reads a stale one, and
an interrupted build resumes at the first missing part.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

PART = 250  # clips per file
BATCH = 16  # clips per encoder call while building


def _layout_rng(seed: int, index: int, k: int) -> random.Random:
    return random.Random(int(np.random.SeedSequence([seed, index, k, 7]).generate_state(1)[0]))


def cache_key(trainer) -> str:
    cfg, pipe = trainer.cfg, trainer.pipe
    h = hashlib.sha256()
    settings = {"seed": cfg.seed, "k": cfg.cache_layouts, "first_frame": cfg.first_frame, "layout": vars(cfg.layout),
                "frames": trainer.frames, "height": trainer.height, "width": trainer.width, "clips": trainer.dataset.index}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for model in (pipe.vae, pipe.image_encoder):
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class EncodingCache:
    def __init__(self, trainer, log=print):
        self.k = trainer.cfg.cache_layouts
        self.root = Path(trainer.cfg.data) / "encodings" / cache_key(trainer)
        self.per_clip_target = trainer.cfg.first_frame == "clip"  # the target does not depend on the layout
        n = len(trainer.dataset)
        parts = range((n + PART - 1) // PART)
        missing = [p for p in parts if not (self.root / f"part-{p:05d}.safetensors").is_file()]
        if missing:
            self.build(trainer, [p for p in missing if p % trainer.world_size == trainer.rank], n, log)
        if trainer.world_size > 1:
            torch.distributed.barrier()
        from safetensors.torch import load_file

        loaded = [load_file(self.root / f"part-{p:05d}.safetensors") for p in parts]
        self.x0, self.condition, self.image_embeds = (torch.cat([d[name] for d in loaded]) for name in ("x0", "condition", "image_embeds"))

    def build(self, trainer, parts: list[int], n: int, log) -> None:
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        log(f"encoding cache: {len(parts)} part(s) of {PART} clips x {self.k} layout(s) -> {self.root}")
        progress = tqdm(total=sum(min(PART, n - p * PART) for p in parts), desc="encode", unit="clip", file=sys.stderr)
        for p in parts:
            x0, condition, image_embeds = [], [], []
            for start in range(p * PART, min(n, (p + 1) * PART), BATCH):
                indices = range(start, min(n, (p + 1) * PART, start + BATCH))
                examples = [trainer.example(i, _layout_rng(trainer.cfg.seed, i, k)) for i in indices for k in range(self.k)]
                enc = trainer.encode_visual(examples, with_target=not self.per_clip_target)
                if self.per_clip_target:
                    enc["x0"] = trainer.encode_visual(examples[:: self.k], with_condition=False)["x0"]
                x0.append(enc["x0"].unflatten(0, (len(indices), -1)).cpu())  # (clips, 1 or K, C, F, h, w)
                condition.append(enc["condition"].unflatten(0, (len(indices), self.k)).cpu())
                image_embeds.append(enc["image_embeds"].unflatten(0, (len(indices), self.k)).cpu())
                progress.update(len(indices))
            tmp = self.root / f"part-{p:05d}.tmp"
            save_file({"x0": torch.cat(x0).contiguous(), "condition": torch.cat(condition).contiguous(),
                       "image_embeds": torch.cat(image_embeds).contiguous()}, tmp)
            tmp.replace(self.root / f"part-{p:05d}.safetensors")  # a part is complete or absent
        progress.close()

    def batch(self, indices: list[int], layouts: list[int], device) -> dict:
        idx, lay = torch.tensor(indices), torch.tensor(layouts)
        x0 = self.x0[idx, 0] if self.per_clip_target else self.x0[idx, lay]
        return {"x0": x0.to(device), "condition": self.condition[idx, lay].to(device), "image_embeds": self.image_embeds[idx, lay].to(device)}
