"""Synthetic test videos: a coloured subject moving over a static textured background."""

from pathlib import Path

import numpy as np

from magref.io import write_video


def moving_subject_video(path: Path, frames=40, size=(96, 128), colour=(220, 40, 40), seed=0, fps=8, caption=None):
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 120)], -1).astype(np.uint8)
    background = (background // 2 + rng.integers(0, 40, (h, w, 3), dtype=np.uint8)).astype(np.uint8)
    out = []
    r = min(h, w) // 6
    for t in range(frames):
        cx = int(r + (w - 2 * r) * t / max(1, frames - 1))
        cy = h // 2 + int(r * 0.5 * np.sin(t / 3))
        frame = background.copy()
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        frame[disc] = colour
        frame[(np.abs(xx - cx) < r // 3) & (np.abs(yy - cy) < r // 3)] = (250, 250, 60)  # a texture on the subject
        out.append(frame)
    write_video(path, np.stack(out), fps)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path
