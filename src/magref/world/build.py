"""Write world clips as a magref training dataset (the same tar-shard format as `magref prepare`),
with subject cut-outs taken from one of the clip's own frames (the middle one unless told) through
the ground-truth masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.extract import cutout, mask_bbox
from ..data.shards import FORMAT, MANIFEST, Sample, Subject, write_shard
from ..io import write_json
from .clips import make_clip
from .render import identity, is_held_out

NUM_IDENTITIES = 400


def identity_ids(split: str) -> list[int]:
    held = split == "heldout"
    return [i for i in range(NUM_IDENTITIES) if is_held_out(i) == held]


def build_world_dataset(out: str | Path, num_clips: int, split: str = "train", seed: int = 0, frames: int = 17, height: int = 64,
                        width: int = 64, subjects: int = 1, samples_per_shard: int = 500, log=print, cutout_frame: int | None = None,
                        caption_style: str = "kind") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = identity_ids(split)
    manifest = {"format": FORMAT, "settings": {"frames": frames, "fps": 8.0, "height": height, "width": width, "max_clips_per_video": 1,
                "samples_per_shard": samples_per_shard, "extractor": "world-ground-truth",
                "cutout_frame": frames // 2 if cutout_frame is None else cutout_frame},
                "world": {"split": split, "seed": seed, "subjects": subjects, "identities": len(pool), "captions": caption_style}, "shards": [], "skipped": []}
    buffer: list[Sample] = []
    for k in range(num_clips):
        rng = np.random.default_rng([seed, k])
        ids = [int(i) for i in rng.choice(pool, size=subjects, replace=False)]
        clip = make_clip([identity(i) for i in ids], rng, frames, height, width, caption_style=caption_style)
        mid = frames // 2 if cutout_frame is None else cutout_frame
        subs = []
        for ident, mask in zip(clip.identities, clip.masks[:, mid]):
            box = mask_bbox(mask)
            if box is not None and mask.sum() >= 16:  # a subject almost hidden makes no reference
                subs.append(Subject(cutout(clip.frames[mid], mask, box), box, "person" if ident.kind == "character" else "object"))
        if not subs:
            continue
        meta = {"source": f"world/{split}/{k}", "start": 0, "fps": 8.0, "identities": ids, "motions": clip.motions, "scene": clip.scene}
        masks = clip.masks.any(0).astype(np.uint8)  # (F, H, W): where any subject is, for subject-weighted losses
        buffer.append(Sample(f"{split}_{seed}_{k:07d}", clip.frames, clip.caption, subs, meta, masks))
        if len(buffer) >= samples_per_shard or k == num_clips - 1:
            name = f"shard-{len(manifest['shards']):05d}.tar"
            write_shard(out / name, buffer)
            manifest["shards"].append({"file": name, "keys": [s.key for s in buffer]})
            buffer = []
    manifest["num_samples"] = sum(len(s["keys"]) for s in manifest["shards"])
    write_json(out / MANIFEST, manifest)
    log(f"world: {manifest['num_samples']} {split} clips with {subjects} subject(s) -> {out}")
    return json.loads((out / MANIFEST).read_text())
