"""Write world clips as a magref training dataset (the same tar-shard format as `magref prepare`),
with subject cut-outs taken from one of the clip's own frames (the middle one unless told) through
the ground-truth masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.extract import cutout, mask_bbox
from ..data.shards import FORMAT, MANIFEST, Sample, ShardWriter, Subject
from .clips import make_clip
from .identities import identity_ids
from .render import identity


def build_world_dataset(out: str | Path, num_clips: int, split: str = "train", seed: int = 0, frames: int = 17, height: int = 64,
                        width: int = 64, subjects: int | tuple[int, ...] = 1, samples_per_shard: int = 500, log=print, cutout_frame: int | None = None,
                        caption_style: str = "kind") -> dict:
    """World clips as a dataset in `magref prepare`'s shard format, each subject cut out of its
    clip (at `cutout_frame`, default the middle frame). `subjects`: how many per clip, or a tuple
    of counts to draw from uniformly per clip (e.g. (1, 2, 3))."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = identity_ids(split)
    manifest = {"format": FORMAT, "settings": {"frames": frames, "fps": 8.0, "height": height, "width": width, "max_clips_per_video": 1,
                "samples_per_shard": samples_per_shard, "extractor": "world-ground-truth",
                "cutout_frame": frames // 2 if cutout_frame is None else cutout_frame},
                "world": {"split": split, "seed": seed, "subjects": subjects if isinstance(subjects, int) else list(subjects), "identities": len(pool),
                          "captions": caption_style},
                "shards": [], "skipped": []}
    writer = ShardWriter(out, manifest, samples_per_shard, resumable=False)  # the manifest appears when the dataset is complete
    for k in range(num_clips):
        rng = np.random.default_rng([seed, k])
        count = subjects if isinstance(subjects, int) else int(rng.choice(subjects))  # a fixed count draws nothing: old datasets stay the same
        ids = [int(i) for i in rng.choice(pool, size=count, replace=False)]
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
        writer.add(Sample(f"{split}_{seed}_{k:07d}", clip.frames, clip.caption, subs, meta, masks))
        writer.flush_if_full()
    writer.close()
    log(f"world: {manifest['num_samples']} {split} clips with {subjects} subject(s) -> {out}")
    return json.loads((out / MANIFEST).read_text())
