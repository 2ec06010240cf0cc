"""Draw the bundled example references (no third-party photos in the repo).

Placeholders until the miniature world (issue 7) renders held-out identities:
    python scripts/make_example_refs.py src/magref/assets/examples
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw


def character() -> Image.Image:
    im = Image.new("RGBA", (192, 256), (0, 0, 0, 0))  # transparent: composited on white
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((46, 150, 146, 256), radius=30, fill=(40, 120, 200, 255))  # shirt
    d.ellipse((36, 20, 156, 160), fill=(238, 190, 150, 255))  # face
    d.pieslice((30, 6, 162, 110), 180, 360, fill=(90, 50, 20, 255))  # hair
    for x in (68, 112):
        d.ellipse((x - 10, 76, x + 10, 96), fill=(255, 255, 255, 255))
        d.ellipse((x - 5, 81, x + 5, 91), fill=(30, 30, 30, 255))
    d.arc((66, 100, 126, 136), 20, 160, fill=(160, 40, 40, 255), width=4)  # smile
    return im


def mug() -> Image.Image:
    im = Image.new("RGB", (224, 192), (250, 250, 245))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((40, 30, 160, 170), radius=14, fill=(220, 60, 50))
    for y in range(45, 170, 24):
        d.rectangle((40, y, 160, y + 8), fill=(250, 220, 60))
    d.arc((140, 60, 200, 130), 270, 90, fill=(220, 60, 50), width=12)
    return im


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "src/magref/assets/examples")
    out.mkdir(parents=True, exist_ok=True)
    character().save(out / "character.png")
    mug().save(out / "mug.png")
    print(f"wrote {out}/character.png, {out}/mug.png")
