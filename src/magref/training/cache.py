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


def layout_rng(seed: int, index: int, k: int) -> random.Random:
    """The draw of clip `index`'s k-th cached layout."""
    return random.Random(int(np.random.SeedSequence([seed, index, k, 7]).generate_state(1)[0]))


def cache_key(settings: dict, encoders: list[torch.nn.Module]) -> str:
    """The settings that shape an encoding and the encoders' weights, hashed: a changed one
    never reads a stale cache."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for model in encoders:
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class EncodingCache:
    """The encodings of `num_clips` clips x `k` layouts under `root`, built by `encode` where
    missing (this rank's share of the parts under torchrun), then held in memory.

    encode(indices, k) -> {"x0": (clips, 1 or k, ...), "condition": (clips, k, ...),
    "image_embeds": (clips, k, ...)}; x0 has one entry per clip when the target does not depend
    on the layout (`per_clip_target`)."""

    def __init__(self, root: Path, k: int, num_clips: int, encode, per_clip_target: bool, rank: int = 0, world_size: int = 1, log=print):
        self.root, self.k, self.per_clip_target = Path(root), k, per_clip_target
        parts = range((num_clips + PART - 1) // PART)
        missing = [p for p in parts if not (self.root / f"part-{p:05d}.safetensors").is_file()]
        if missing:
            self.build(encode, [p for p in missing if p % world_size == rank], num_clips, log)
        if world_size > 1:
            torch.distributed.barrier()
        from safetensors.torch import load_file

        loaded = [load_file(self.root / f"part-{p:05d}.safetensors") for p in parts]
        self.x0, self.condition, self.image_embeds = (torch.cat([d[name] for d in loaded]) for name in ("x0", "condition", "image_embeds"))

    def build(self, encode, parts: list[int], n: int, log) -> None:
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        log(f"encoding cache: {len(parts)} part(s) of {PART} clips x {self.k} layout(s) -> {self.root}")
        progress = tqdm(total=sum(min(PART, n - p * PART) for p in parts), desc="encode", unit="clip", file=sys.stderr)
        for p in parts:
            chunks = []
            for start in range(p * PART, min(n, (p + 1) * PART), BATCH):
                indices = list(range(start, min(n, (p + 1) * PART, start + BATCH)))
                chunks.append({name: t.cpu() for name, t in encode(indices, self.k).items()})
                progress.update(len(indices))
            tmp = self.root / f"part-{p:05d}.tmp"
            save_file({name: torch.cat([c[name] for c in chunks]).contiguous() for name in ("x0", "condition", "image_embeds")}, tmp)
            tmp.replace(self.root / f"part-{p:05d}.safetensors")  # a part is complete or absent
        progress.close()

    def batch(self, indices: list[int], layouts: list[int], device) -> dict:
        idx, lay = torch.tensor(indices), torch.tensor(layouts)
        x0 = self.x0[idx, 0] if self.per_clip_target else self.x0[idx, lay]
        return {"x0": x0.to(device), "condition": self.condition[idx, lay].to(device), "image_embeds": self.image_embeds[idx, lay].to(device)}
