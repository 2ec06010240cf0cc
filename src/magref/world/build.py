"""Write world clips as a magref training dataset (the same tar-shard format as `magref prepare`),
with subject cut-outs taken from one of the clip's own frames (the middle one unless told) through
the ground-truth masks."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from ..data.extract import cutout, mask_bbox
from ..data.shards import FORMAT, MANIFEST, Sample, ShardWriter, Subject
from .clips import make_clip
from .identities import identity_ids
from .render import identity


def build_world_dataset(out: str | Path, num_clips: int, split: str = "train", seed: int = 0, frames: int = 17, height: int = 64,
                        width: int = 64, subjects: int | tuple[int, ...] = 1, samples_per_shard: int = 500, log=print, cutout_frame: int | None = None,
                        caption_style: str = "kind", workers: int = 1, identities: int | None = None) -> dict:
    """World clips as a dataset in `magref prepare`'s shard format, each subject cut out of its
    clip (at `cutout_frame`, default the middle frame). `subjects`: how many per clip, or a tuple
    of counts to draw from uniformly per clip (e.g. (1, 2, 3)). `workers`: processes that render
    clips (clip k depends on (seed, k) alone and is written in order, so any count writes the same
    dataset; on a many-core GPU machine rendering, not the GPU, bounded the data stage).
    `identities`: how many training identities to draw from (`identity_ids`; default the split's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = identity_ids(split, identities)
    # clips of another identity pool are other clips under the same (seed, k): their keys say so,
    # so that nothing keyed by the clip list (the encoding cache) takes one for the other
    tag = split if len(pool) == len(identity_ids(split)) else f"{split}{len(pool)}"
    mid = frames // 2 if cutout_frame is None else cutout_frame
    manifest = {"format": FORMAT, "settings": {"frames": frames, "fps": 8.0, "height": height, "width": width, "max_clips_per_video": 1,
                "samples_per_shard": samples_per_shard, "extractor": "world-ground-truth", "cutout_frame": mid},
                "world": {"split": split, "seed": seed, "subjects": subjects if isinstance(subjects, int) else list(subjects), "identities": len(pool),
                          "captions": caption_style},
                "shards": [], "skipped": []}
    writer = ShardWriter(out, manifest, samples_per_shard, resumable=False)  # the manifest appears when the dataset is complete
    render = partial(_world_sample, split=tag, seed=seed, pool=pool, frames=frames, height=height, width=width, subjects=subjects,
                     mid=mid, caption_style=caption_style)
    # spawn, not fork: the caller may hold torch's thread pools, which a forked child must not inherit
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) if workers > 1 else nullcontext() as pool:
        samples = pool.map(render, range(num_clips), chunksize=max(1, min(16, num_clips // (4 * workers)))) if pool else map(render, range(num_clips))
        for sample in samples:
            if sample is not None:
                writer.add(sample)
                writer.flush_if_full()
    writer.close()
    log(f"world: {manifest['num_samples']} {split} clips with {subjects} subject(s) -> {out}")
    return json.loads((out / MANIFEST).read_text())


def _world_sample(k: int, split: str, seed: int, pool, frames: int, height: int, width: int, subjects, mid: int, caption_style: str) -> Sample | None:
    """Clip k of a world dataset, or None when no subject is visible enough to cut out."""
    rng = np.random.default_rng([seed, k])
    count = subjects if isinstance(subjects, int) else int(rng.choice(subjects))  # a fixed count draws nothing: old datasets stay the same
    ids = [int(i) for i in rng.choice(pool, size=count, replace=False)]
    clip = make_clip([identity(i) for i in ids], rng, frames, height, width, caption_style=caption_style)
    subs = []
    for ident, mask in zip(clip.identities, clip.masks[:, mid]):
        box = mask_bbox(mask)
        if box is not None and mask.sum() >= 16:  # a subject almost hidden makes no reference
            subs.append(Subject(cutout(clip.frames[mid], mask, box), box, "person" if ident.kind == "character" else "object"))
    if not subs:
        return None
    meta = {"source": f"world/{split}/{k}", "start": 0, "fps": 8.0, "identities": ids, "motions": clip.motions, "scene": clip.scene}
    masks = clip.masks.any(0).astype(np.uint8)  # (F, H, W): where any subject is, for subject-weighted losses
    return Sample(f"{split}_{seed}_{k:07d}", clip.frames, clip.caption, subs, meta, masks)
