"""Clips of the world: subjects moving over a scene, with a templated caption and per-subject
ground-truth masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .render import SCENES, Identity, render_subject, scene_image

MOTIONS = {
    "moves from left to right": lambda u: (0.2 + 0.6 * u, 0.0, 1.0),
    "moves from right to left": lambda u: (0.8 - 0.6 * u, 0.0, 1.0),
    "jumps up and down": lambda u: (0.5, -0.25 * abs(np.sin(np.pi * 2 * u)), 1.0),
    "comes closer": lambda u: (0.5, 0.0, 0.7 + 0.5 * u),
    "moves away": lambda u: (0.5, 0.0, 1.2 - 0.5 * u),
}


@dataclass
class Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    masks: np.ndarray  # (S, F, H, W) bool, per subject
    caption: str
    identities: list[Identity]
    motions: list[str]
    scene: str


CAPTION_STYLES = ("appearance", "kind")  # "kind": captions say who moves how, not what they look like


def caption(identities: list[Identity], motions: list[str], scene: str, style: str = "appearance") -> str:
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style {style!r}: use one of {CAPTION_STYLES}")
    parts = [f"{ident.describe(appearance=style == 'appearance')} {motion}" for ident, motion in zip(identities, motions)]
    n = len(parts)
    text = (" and ".join(parts) if n <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]) + f" in a {scene}."
    return text[0].upper() + text[1:]


def make_clip(identities: list[Identity], rng: np.random.Generator, frames: int = 17, height: int = 64, width: int = 64,
              scene: str | None = None, motions: list[str] | None = None, caption_style: str = "appearance") -> Clip:
    scene = scene or str(rng.choice(SCENES))
    motions = motions or [str(rng.choice(list(MOTIONS))) for _ in identities]
    background = scene_image(scene, height, width, rng)
    n = len(identities)
    base = int(height * rng.uniform(0.42, 0.55) * (1.0 if n == 1 else 0.8))
    sprites = [render_subject(ident, size=2 * base) for ident in identities]
    lanes = [(k + 0.5) / n for k in range(n)]  # several subjects keep to their own lane
    rot = rng.uniform(-8, 8, size=n)
    out = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((n, frames, height, width), bool)
    for t in range(frames):
        u = t / max(1, frames - 1)
        canvas = Image.fromarray(background.copy())
        for k, (sprite, motion) in enumerate(zip(sprites, motions)):
            fx, dy, scale = MOTIONS[motion](u)
            if n > 1:
                fx = lanes[k] + (fx - 0.5) * (0.8 / n)
            size = max(6, int(base * scale))
            im = sprite.resize((size, size), Image.Resampling.BILINEAR).rotate(rot[k] * np.sin(2 * np.pi * u), resample=Image.Resampling.BILINEAR)
            x = int(fx * width - size / 2)
            y = int(height * 0.62 + dy * height - size / 2)
            canvas.paste(im, (x, y), im)
            alpha = np.zeros((height, width), bool)
            a = np.asarray(im.split()[3]) > 127
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(width, x + size), min(height, y + size)
            if x1 > x0 and y1 > y0:
                alpha[y0:y1, x0:x1] = a[y0 - y : y1 - y, x0 - x : x1 - x]
            masks[:k, t] &= ~alpha  # later subjects occlude earlier ones
            masks[k, t] = alpha
        out[t] = np.asarray(canvas)
    return Clip(out, masks, caption(identities, motions, scene, caption_style), list(identities), motions, scene)
