"""Frozen-encoder outputs of a dataset, computed once (`cache_layouts: K` in a training config,
or ahead of training with `magref encode CONFIG.yaml`).

The VAE, CLIP and text-encoder work of a step is the same every epoch but for the layout draw and
caption dropout: on a CPU the visual part costs about four times the miniature transformer's
forward and backward; on a GPU, a 14B run that reads it keeps neither the VAE encoder nor
UMT5-XXL busy (they are moved off the device once the cache is complete). With K > 0 every clip
gets K layouts, drawn once and seeded by (seed, clip, k); a step picks one of them. The caption's
embedding is cached per clip, the empty caption's once (caption dropout).

Stored as safetensors parts of `part_clips` clips, read memory-mapped (a dataset larger than the
machine's memory trains from it): `<data>/encodings/<key>/` for the visual part and
`<data>/encodings/text-<key>/` for the captions. Each key hashes the encoders' weights and every
setting that shapes an encoding: runs that share data and encoders (the miniature world's
ablations) share one cache, a changed setting or caption never reads a stale one, an interrupted
build resumes at the first missing part, and under torchrun each rank builds its share of the parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

PART = 250  # clips per file (the default of `cache_part_clips`)
BATCH = 16  # clips per encode() call while building


def layout_rng(seed: int, index: int, k: int) -> random.Random:
    """The draw of clip `index`'s k-th cached layout."""
    return random.Random(int(np.random.SeedSequence([seed, index, k, 7]).generate_state(1)[0]))


def cache_key(settings: dict, encoders: list[torch.nn.Module], native: bool = False) -> str:
    """The settings that shape an encoding and the encoders' weights, hashed: a changed one
    never reads a stale cache. `native`: the weights' own bytes (and dtype), not a float32 copy:
    half the bytes of a bf16 UMT5-XXL and no 23 GB of copies (the visual key keeps float32 so
    that caches written before stay valid)."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for model in encoders:
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            t = tensor.detach().cpu().contiguous()
            if native:
                h.update(str(t.dtype).encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(t.float().numpy().tobytes())
    return h.hexdigest()[:16]


class PartCache:
    """Per-clip tensors of `num_clips` clips in parts under `root`, built by
    `encode(indices) -> {name: (len(indices), ...)}` where missing (this rank's share of the parts
    under torchrun), then read memory-mapped. Tensors whose second dimension differs between
    calls (trimmed caption embeddings) are zero-padded to the part's longest."""

    what = "encoding cache"

    def __init__(self, root: Path, num_clips: int, encode, rank: int = 0, world_size: int = 1, log=print, part_clips: int = PART,
                 dtype: torch.dtype = torch.float32):
        self.root, self.num_clips, self.part_clips, self.dtype = Path(root), num_clips, part_clips, dtype
        parts = range((num_clips + part_clips - 1) // part_clips)
        missing = [p for p in parts if not self.part_path(p).is_file()]
        if missing:
            self.build(encode, [p for p in missing if p % world_size == rank], log)
        if world_size > 1:
            torch.distributed.barrier()
        self.parts: dict[int, object] = {}  # memory-mapped when first read; tensors read per row

    def part_path(self, p: int) -> Path:
        return self.root / f"part-{p:05d}.safetensors"

    def build(self, encode, parts: list[int], log) -> None:
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        n, size = self.num_clips, self.part_clips
        log(f"{self.what}: {len(parts)} part(s) of {size} clips -> {self.root}")
        progress = tqdm(total=sum(min(size, n - p * size) for p in parts), desc="encode", unit="clip", file=sys.stderr)
        for p in parts:
            chunks = []
            for start in range(p * size, min(n, (p + 1) * size), BATCH):
                indices = list(range(start, min(n, (p + 1) * size, start + BATCH)))
                chunks.append({name: t.cpu() for name, t in encode(indices).items()})
                progress.update(len(indices))
            tensors = {}
            for name in chunks[0]:
                parts_of = [c[name] for c in chunks]
                if parts_of[0].dim() >= 3:
                    longest = max(t.shape[1] for t in parts_of)
                    parts_of = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, longest - t.shape[1])) for t in parts_of]
                tensors[name] = torch.cat(parts_of).to(self.dtype if parts_of[0].is_floating_point() else parts_of[0].dtype).contiguous()
            tmp = self.root / f"part-{p:05d}.{os.getpid()}.tmp"  # two jobs building one cache do not collide
            save_file(tensors, tmp)
            tmp.replace(self.part_path(p))  # a part is complete or absent
        progress.close()

    def rows(self, name: str, indices: list[int]) -> list[torch.Tensor]:
        """`name`'s entry of each clip, as stored (float entries in float32)."""
        from safetensors import safe_open

        out = []
        for i in indices:
            p = i // self.part_clips
            if p not in self.parts:
                self.parts[p] = safe_open(self.part_path(p), framework="pt")
            t = self.parts[p].get_slice(name)[i % self.part_clips]
            out.append(t.float() if t.is_floating_point() else t)
        return out


class EncodingCache(PartCache):
    """The visual encodings of clips x `k` layouts: encode(indices, k) -> {"x0": (clips, 1 or k,
    ...), "condition": (clips, k, ...), "image_embeds": (clips, k, ...)}; x0 has one entry per
    clip when the target does not depend on the layout (`per_clip_target`)."""

    def __init__(self, root: Path, k: int, num_clips: int, encode, per_clip_target: bool, rank: int = 0, world_size: int = 1, log=print,
                 part_clips: int = PART, dtype: torch.dtype = torch.float32):
        self.k, self.per_clip_target = k, per_clip_target
        self.what = f"encoding cache ({k} layout(s) per clip)"
        super().__init__(root, num_clips, lambda indices: encode(indices, k), rank, world_size, log, part_clips, dtype)

    def batch(self, indices: list[int], layouts: list[int], device) -> dict:
        pick = lambda name, per_layout: torch.stack([r[lay] if per_layout else r[0] for r, lay in zip(self.rows(name, indices), layouts)])  # noqa: E731
        return {"x0": pick("x0", not self.per_clip_target).to(device), "condition": pick("condition", True).to(device),
                "image_embeds": pick("image_embeds", True).to(device)}


class TextCache(PartCache):
    """Each clip's caption embedding, trimmed to its tokens (the text encoder's output is zero
    beyond them, as Wan pads) and padded back to `text_len` when read; the empty caption's once,
    for caption dropout. encode(indices) -> {"text": (clips, L, D)}, L the longest caption's tokens."""

    what = "caption cache"

    def __init__(self, root: Path, num_clips: int, encode, empty, text_len: int, rank: int = 0, world_size: int = 1, log=print,
                 part_clips: int = PART, dtype: torch.dtype = torch.float32):
        from safetensors.torch import load_file, save_file

        self.text_len, root = text_len, Path(root)
        empty_file = root / "empty.safetensors"
        if not empty_file.is_file() and rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f"empty.{os.getpid()}.tmp"
            save_file({"text": empty().to(dtype).contiguous()}, tmp)
            tmp.replace(empty_file)
        super().__init__(root, num_clips, encode, rank, world_size, log, part_clips, dtype)
        self.empty = load_file(empty_file)["text"].float()

    def batch(self, indices: list[int], dropped: list[bool], device) -> torch.Tensor:
        """(B, text_len, D): each clip's caption embedding, or the empty caption's where dropped."""
        out = []
        for row, drop in zip(self.rows("text", indices), dropped):
            out.append(self.empty if drop else torch.nn.functional.pad(row, (0, 0, 0, self.text_len - row.shape[0])))
        return torch.stack(out).to(device)
