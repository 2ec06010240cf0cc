"""Identities and how they look. Every identity is a function of its integer id; ids with
id % 5 == 0 are held out of training (`is_held_out`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

PALETTE = {
    "red": (214, 48, 49), "orange": (240, 140, 30), "yellow": (246, 214, 60), "green": (46, 160, 67),
    "teal": (32, 170, 170), "blue": (40, 90, 220), "purple": (130, 60, 190), "pink": (240, 120, 180),
    "brown": (130, 80, 40), "black": (30, 30, 30), "white": (245, 245, 245), "grey": (140, 140, 140),
}
SKINS = [(250, 215, 180), (225, 180, 140), (180, 130, 90), (120, 80, 55)]
HAIR_STYLES = ("short", "long", "spiky")
SHAPES = ("ball", "box", "star", "triangle", "mug")
PATTERNS = ("plain", "striped", "dotted", "checked")
PATTERN_NOUNS = {"striped": "stripes", "dotted": "dots", "checked": "checks"}
SCENES = ("meadow", "beach", "night street", "living room")


def is_held_out(identity_id: int) -> bool:
    return identity_id % 5 == 0


@dataclass(frozen=True)
class Identity:
    id: int
    kind: str  # "character" | "object"
    params: dict = field(hash=False, compare=False)

    def describe(self, appearance: bool = True) -> str:
        """appearance=False names the kind only ("a person", "a mug"): then only a reference can
        say which person or which mug."""
        p = self.params
        if not appearance:
            return "a person" if self.kind == "character" else f"a {p['shape']}"
        if self.kind == "character":
            glasses = " and glasses" if p["glasses"] else ""
            return f"a person with {p['hair_style']} {p['hair']} hair, a {p['shirt']} shirt{glasses}"
        if p["pattern"] == "plain":
            return f"a {p['colour']} {p['shape']}"
        return f"a {p['colour']} {p['shape']} with {p['pattern_colour']} {PATTERN_NOUNS[p['pattern']]}"


UNIQUE_IDS = 1024  # ids below this never share a look (drawn again on a collision)


@lru_cache(maxsize=1)
def _unique_table() -> list[Identity]:
    table, seen = [], set()
    for i in range(UNIQUE_IDS):
        attempt = 0
        while True:
            ident = _draw(i, attempt)
            key = (ident.kind, tuple(sorted(ident.params.items())))
            if key not in seen:
                seen.add(key)
                table.append(ident)
                break
            attempt += 1
    return table


def identity(identity_id: int) -> Identity:
    if 0 <= identity_id < UNIQUE_IDS:
        return _unique_table()[identity_id]
    return _draw(identity_id, 0)


def _draw(identity_id: int, attempt: int) -> Identity:
    rng = np.random.default_rng([20261125, identity_id, attempt])
    names = list(PALETTE)
    if identity_id % 2 == 0:
        hair, shirt = rng.choice(["black", "brown", "yellow", "red", "grey", "blue"]), rng.choice(names)
        return Identity(identity_id, "character", {
            "skin": int(rng.integers(len(SKINS))), "hair": str(hair), "hair_style": str(rng.choice(HAIR_STYLES)),
            "shirt": str(shirt), "glasses": bool(rng.random() < 0.3),
        })
    colour = str(rng.choice(names))
    pattern_colour = str(rng.choice([n for n in names if n != colour]))
    return Identity(identity_id, "object", {
        "shape": str(rng.choice(SHAPES)), "colour": colour, "pattern": str(rng.choice(PATTERNS)), "pattern_colour": pattern_colour,
    })


def _pattern(draw: ImageDraw.ImageDraw, box, pattern: str, colour, s: int) -> None:
    x0, y0, x1, y1 = box
    if pattern == "striped":
        for y in range(y0, y1, 6 * s):
            draw.rectangle((x0, y, x1, y + 2 * s), fill=colour)
    elif pattern == "dotted":
        for y in range(y0 + 3 * s, y1, 7 * s):
            for x in range(x0 + 3 * s, x1, 7 * s):
                draw.ellipse((x - 2 * s, y - 2 * s, x + 2 * s, y + 2 * s), fill=colour)
    elif pattern == "checked":
        step = 6 * s
        for j, y in enumerate(range(y0, y1, step)):
            for i, x in enumerate(range(x0, x1, step)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + step, y + step), fill=colour)


def render_subject(ident: Identity, size: int = 48, supersample: int = 4) -> Image.Image:
    """The identity as an RGBA sprite (transparent background), size x size."""
    s = supersample
    n = size * s
    im = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    p = ident.params
    if ident.kind == "character":
        skin, hair, shirt = SKINS[p["skin"]], PALETTE[p["hair"]], PALETTE[p["shirt"]]
        d.rounded_rectangle((int(0.22 * n), int(0.58 * n), int(0.78 * n), n - 1), radius=int(0.12 * n), fill=(*shirt, 255))
        d.ellipse((int(0.25 * n), int(0.12 * n), int(0.75 * n), int(0.64 * n)), fill=(*skin, 255))
        if p["hair_style"] == "short":
            d.pieslice((int(0.23 * n), int(0.06 * n), int(0.77 * n), int(0.5 * n)), 180, 360, fill=(*hair, 255))
        elif p["hair_style"] == "long":
            d.pieslice((int(0.2 * n), int(0.05 * n), int(0.8 * n), int(0.55 * n)), 180, 360, fill=(*hair, 255))
            d.rectangle((int(0.2 * n), int(0.28 * n), int(0.3 * n), int(0.62 * n)), fill=(*hair, 255))
            d.rectangle((int(0.7 * n), int(0.28 * n), int(0.8 * n), int(0.62 * n)), fill=(*hair, 255))
        else:
            for k in range(5):
                x = int((0.28 + 0.11 * k) * n)
                d.polygon([(x - int(0.07 * n), int(0.3 * n)), (x, int(0.04 * n)), (x + int(0.07 * n), int(0.3 * n))], fill=(*hair, 255))
        for ex in (0.41, 0.59):
            d.ellipse((int((ex - 0.04) * n), int(0.34 * n), int((ex + 0.04) * n), int(0.42 * n)), fill=(255, 255, 255, 255))
            d.ellipse((int((ex - 0.02) * n), int(0.36 * n), int((ex + 0.02) * n), int(0.40 * n)), fill=(20, 20, 20, 255))
        if p["glasses"]:
            for ex in (0.41, 0.59):
                d.ellipse((int((ex - 0.07) * n), int(0.31 * n), int((ex + 0.07) * n), int(0.45 * n)), outline=(20, 20, 20, 255), width=2 * s)
        d.arc((int(0.4 * n), int(0.42 * n), int(0.6 * n), int(0.54 * n)), 20, 160, fill=(150, 40, 40, 255), width=2 * s)
    else:
        body, pc = PALETTE[p["colour"]], PALETTE[p["pattern_colour"]]
        mask = Image.new("L", (n, n), 0)
        m = ImageDraw.Draw(mask)
        box = (int(0.1 * n), int(0.1 * n), int(0.9 * n), int(0.9 * n))
        shape = p["shape"]
        if shape == "ball":
            m.ellipse(box, fill=255)
        elif shape == "box":
            m.rectangle((int(0.15 * n), int(0.15 * n), int(0.85 * n), int(0.85 * n)), fill=255)
        elif shape == "triangle":
            m.polygon([(n // 2, int(0.08 * n)), (int(0.92 * n), int(0.9 * n)), (int(0.08 * n), int(0.9 * n))], fill=255)
        elif shape == "star":
            pts = []
            for k in range(10):
                r = 0.45 * n if k % 2 == 0 else 0.2 * n
                a = np.pi / 2 + k * np.pi / 5
                pts.append((n / 2 + r * np.cos(a), n / 2 - r * np.sin(a)))
            m.polygon(pts, fill=255)
        else:  # mug
            m.rounded_rectangle((int(0.12 * n), int(0.18 * n), int(0.7 * n), int(0.9 * n)), radius=int(0.06 * n), fill=255)
            m.arc((int(0.58 * n), int(0.32 * n), int(0.92 * n), int(0.72 * n)), 270, 90, fill=255, width=int(0.08 * n))
        layer = Image.new("RGBA", (n, n), (*body, 255))
        _pattern(ImageDraw.Draw(layer), (0, 0, n, n), p["pattern"], (*pc, 255), s)
        im.paste(layer, (0, 0), mask)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def scene_image(scene: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A background scene, (H, W, 3) uint8, with small random variation."""
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in c)  # noqa: E731
    im = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(im)
    horizon = int(height * rng.uniform(0.45, 0.65))
    if scene == "meadow":
        d.rectangle((0, 0, width, horizon), fill=jitter((150, 200, 245)))
        d.rectangle((0, horizon, width, height), fill=jitter((90, 170, 70)))
        d.ellipse((width * 0.75, height * 0.05, width * 0.9, height * 0.2), fill=(255, 230, 90))
    elif scene == "beach":
        d.rectangle((0, 0, width, horizon), fill=jitter((120, 190, 240)))
        d.rectangle((0, int(horizon * 0.8), width, horizon), fill=jitter((40, 110, 190)))
        d.rectangle((0, horizon, width, height), fill=jitter((235, 210, 150)))
    elif scene == "night street":
        d.rectangle((0, 0, width, height), fill=jitter((20, 25, 60)))
        for x in range(0, width, max(8, width // 6)):
            top = int(height * rng.uniform(0.15, 0.4))
            d.rectangle((x, top, x + width // 8, horizon), fill=jitter((50, 50, 70)))
            d.rectangle((x + 2, top + 4, x + 5, top + 7), fill=(250, 220, 100))
        d.rectangle((0, horizon, width, height), fill=jitter((60, 60, 60)))
    else:  # living room
        d.rectangle((0, 0, width, horizon), fill=jitter((220, 200, 170)))
        d.rectangle((0, horizon, width, height), fill=jitter((150, 100, 60)))
        d.rectangle((int(width * 0.1), int(height * 0.15), int(width * 0.3), int(height * 0.35)), fill=jitter((90, 140, 190)))
    return np.asarray(im)
