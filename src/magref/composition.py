"""Region-aware reference composition: references -> one white canvas + region mask.

This module imports no model code; training, inference and the CLI all compose through
`compose_references`, so a layout means the same thing everywhere.

Conventions: boxes are pixel rectangles (x0, y0, x1, y1), end-exclusive; latent blocks follow
the official (x0, x1, y0, y1) order in latent units. A latent cell covers `spatial_stride` pixels
a side: the VAE's spatial stride, 8 for the official Wan VAE (the default everywhere); a model
with another VAE (the miniature's 4x one) passes its own.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import MagrefInputError

Box = tuple[int, int, int, int]

MAX_GRID_REFERENCES = 8  # the official grids; the official weights were trained with at most 8 references
GRID_SIZES = (1, 2, 3, 4, 6, 8)
MAX_EXTENDED_REFERENCES = 16  # magref's own grids for 9-16 (`extended_grid`)
SPATIAL_STRIDE = 8  # the official VAE's spatial stride: one latent cell covers 8x8 pixels
PATCH_SIZE = 2  # the transformer's spatial patch
SIZE_MULTIPLE = SPATIAL_STRIDE * PATCH_SIZE


def grid_cells(num_cells: int, height: int, width: int) -> list[Box]:
    """The official grid for 1, 2, 3, 4, 6 or 8 cells, in reading order.

    1 = whole canvas; 2 and 3 = vertical strips; 4 = 2x2; 6 = 3x2; 8 = 4x2. Integer division
    puts the remainder pixels into the last column/row, as the official code does.
    """
    cols, rows = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2), 6: (3, 2), 8: (4, 2)}[num_cells]
    cw, ch = width // cols, height // rows
    xs = [c * cw for c in range(cols)] + [width]
    ys = [r * ch for r in range(rows)] + [height]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def _box(values) -> Box:
    """Four whole pixel numbers; anything else (3 or 5 numbers, 1.5, Infinity, a string) is a
    ValueError/TypeError that `RegionLayout.from_json` reports as one line."""
    if isinstance(values, (str, bytes, dict)) or len(values) != 4:
        raise ValueError("a box is [x0, y0, x1, y1]")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
            raise ValueError("box coordinates are whole pixels")
        out.append(int(v))
    return tuple(out)


def grid_size_for(num_references: int) -> int:
    """Cells of the grid that holds `num_references`: the smallest official grid for 1-8, the
    count itself for magref's extended grids (9-16)."""
    if num_references < 1:
        raise MagrefInputError("No reference image was given.", "pass at least one reference image.")
    if num_references > MAX_EXTENDED_REFERENCES:
        raise MagrefInputError(
            f"{num_references} references were given; the grid layouts hold at most {MAX_EXTENDED_REFERENCES}.",
            f"pass {MAX_EXTENDED_REFERENCES} or fewer references, or give an explicit layout with one box per reference.",
        )
    if num_references > MAX_GRID_REFERENCES:
        return num_references
    return min(s for s in GRID_SIZES if s >= num_references)


def extended_grid(num_references: int, height: int, width: int) -> tuple[int, int]:
    """(columns, rows) for 9-16 references: the grid with no empty row or column whose cells are
    closest to square on this canvas (3x3, 4x3, 5x2, 4x4 and their portrait turns), fewest
    cells on a tie. Not an official layout: the official release drops references past 8."""
    best = None
    for rows in range(1, num_references + 1):
        cols = -(-num_references // rows)
        if cols * rows - num_references >= min(cols, rows):  # a whole row or column would stay empty
            continue
        squareness = abs(math.log((width / cols) / (height / rows)))
        key = (round(squareness, 6), cols * rows)
        if best is None or key < best[0]:
            best = (key, (cols, rows))
    return best[1]


def grid_cells_for(num_references: int, height: int, width: int) -> list[Box]:
    """The grid cells for `num_references`: official for 1-8, extended for 9-16."""
    size = grid_size_for(num_references)
    if size <= MAX_GRID_REFERENCES:
        return grid_cells(size, height, width)
    cols, rows = extended_grid(size, height, width)
    xs = [c * (width // cols) for c in range(cols)] + [width]  # remainder pixels to the last column/row, as the official grids
    ys = [r * (height // rows) for r in range(rows)] + [height]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


@dataclass(frozen=True)
class RegionLayout:
    """Where each reference goes on the canvas.

    `cells` are all regions of the layout in order (grid cells may stay empty when there are
    fewer references than cells); `placement[k] = (ref_index, cell_index)` puts reference
    `ref_index` into `cells[cell_index]`, and references are pasted in placement order.
    """

    height: int
    width: int
    cells: tuple[Box, ...]
    placement: tuple[tuple[int, int], ...]
    kind: str = "user"  # "grid" (reading order), "official-random" or "user"
    seed: int | None = None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def grid(cls, num_references: int, height: int, width: int) -> "RegionLayout":
        """Official grid (extended past 8), reference i in cell i (reading order)."""
        cells = grid_cells_for(num_references, height, width)
        return cls(height, width, tuple(cells), tuple((i, i) for i in range(num_references)), "grid")

    @classmethod
    def official_random(cls, num_references: int, height: int, width: int, seed: int) -> "RegionLayout":
        """The official placement after `random.seed(seed)`: indices shuffled first, then cells.

        A private `random.Random(seed)` draws the same sequence as the seeded global generator
        without disturbing anyone else's use of `random`. Past 8 references the same shuffles
        place them on the extended grid.
        """
        cells = grid_cells_for(num_references, height, width)
        rng = random.Random(seed)
        indices = list(range(num_references))
        rng.shuffle(indices)
        rng.shuffle(cells)
        placement = tuple((ref, k) for k, ref in enumerate(indices[: len(cells)]))
        return cls(height, width, tuple(cells), placement, "official-random", seed)

    @classmethod
    def from_boxes(cls, boxes: Sequence[Sequence[int]], height: int, width: int) -> "RegionLayout":
        """An explicit user layout: `boxes[i]` is the region of reference i."""
        cells = tuple(_box(b) for b in boxes)
        return cls(height, width, cells, tuple((i, i) for i in range(len(cells))), "user")

    @classmethod
    def from_json(cls, data: dict | str | Path, height: int | None = None, width: int | None = None) -> "RegionLayout":
        """Read a layout file: `{"boxes": [[x0,y0,x1,y1], ...]}` (one per reference, in order),
        or `{"placement": [{"ref": i, "cell_x0y0x1y1"|"box": [...]}, ...]}`, optionally with
        `"cells"`, `"height"`, `"width"`. This reads the files that `magref compose` writes."""
        source = None
        if not isinstance(data, dict):
            source = Path(data)
            if not source.is_file():
                raise MagrefInputError(f"Layout file {source} does not exist.", "check the --layout path.")
            try:
                data = json.loads(source.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MagrefInputError(f"Layout file {source} is not valid JSON ({e}).",
                                       'fix the file; write it as {"boxes": [[x0, y0, x1, y1], ...]}.') from None
        where = f"layout file {source}" if source else "layout"
        try:
            if not isinstance(data, dict):
                raise TypeError("a layout is a JSON object")
            h = int(data.get("height", height or 0)) if height is None else height
            w = int(data.get("width", width or 0)) if width is None else width
            stated = (data.get("height", h), data.get("width", w))
            if "placement" in data:
                cells = [_box(p.get("box") or p["cell_x0y0x1y1"]) for p in data["placement"]]
                refs = [int(p["ref"]) for p in data["placement"]]
                extra = [_box(c) for c in data.get("cells", []) if tuple(c) not in cells]
                layout = cls(h, w, tuple(cells + extra), tuple((r, k) for k, r in enumerate(refs)), "user")
            elif "boxes" in data:
                layout = cls.from_boxes(data["boxes"], h, w)
            else:
                raise KeyError("boxes")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise MagrefInputError(
                f"The {where} needs a 'boxes' list ([[x0, y0, x1, y1], ...], four whole pixel numbers per reference) "
                "or a 'placement' list.",
                'write it as {"boxes": [[0, 0, 416, 480], [416, 0, 832, 480]]}.',
            ) from None
        if stated != (h, w):  # a layout made for another canvas would put every box elsewhere
            raise MagrefInputError(
                f"The {where} is for a {stated[1]}x{stated[0]} canvas but the canvas is {w}x{h}.",
                f"generate at --width {stated[1]} --height {stated[0]}, or remove 'height' and 'width' from the layout to use its boxes as they are.")
        return layout

    # -- views --------------------------------------------------------------------------------
    def boxes(self) -> list[Box]:
        """Box of each reference, indexed by reference."""
        out: dict[int, Box] = {ref: self.cells[k] for ref, k in self.placement}
        return [out[i] for i in sorted(out)]

    def latent_blocks(self, stride: int = SPATIAL_STRIDE) -> np.ndarray:
        """Cells in latent units (x0, x1, y0, y1): start rounded up, end rounded down, as the
        official `get_latent_regions_safe`; degenerate cells are dropped."""
        blocks = []
        for x0, y0, x1, y1 in self.cells:
            lx0 = math.ceil(x0 / stride) if x0 > 0 else 0
            ly0 = math.ceil(y0 / stride) if y0 > 0 else 0
            lx1, ly1 = x1 // stride, y1 // stride
            if lx0 < lx1 and ly0 < ly1:
                blocks.append((lx0, lx1, ly0, ly1))
        return np.asarray(blocks, dtype=np.int64).reshape(-1, 4)

    @property
    def extended(self) -> bool:
        """A grid past the official 8 cells (magref's own; the official weights never saw one)."""
        return self.kind != "user" and len(self.cells) > MAX_GRID_REFERENCES

    def validate(self, num_references: int) -> None:
        refs = sorted(r for r, _ in self.placement)
        if refs != list(range(num_references)):
            raise MagrefInputError(
                f"The layout places {len(self.placement)} reference(s) but {num_references} were given.",
                "give exactly one box per reference image, in the same order.",
            )
        for ref, k in self.placement:
            x0, y0, x1, y1 = self.cells[k]
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise MagrefInputError(
                    f"Layout box {list(self.cells[k])} of reference {ref} is empty or outside the "
                    f"{self.width}x{self.height} canvas.",
                    f"use boxes with 0 <= x0 < x1 <= {self.width} and 0 <= y0 < y1 <= {self.height}.",
                )

    def to_dict(self, stride: int = SPATIAL_STRIDE) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "kind": self.kind,
            "seed": self.seed,
            "cells": [list(c) for c in self.cells],
            "placement": [{"ref": r, "box": list(self.cells[k])} for r, k in self.placement],
            "boxes": [list(b) for b in self.boxes()],
            "latent_blocks_x0x1y0y1": self.latent_blocks(stride).tolist(),
            "extended_grid": self.extended,
        }


@dataclass
class Composition:
    """The composed condition image and its masks (numpy, model-free)."""

    canvas: Image.Image  # RGB, height x width, white where no reference
    pixel_mask: np.ndarray  # (H, W) uint8, 1 on reference pixels
    latent_mask: np.ndarray  # (H/s, W/s) uint8, 1 where any pixel of the s x s patch is 1
    latent_blocks: np.ndarray  # (cells, 4) int64, (x0, x1, y0, y1) in latent units
    layout: RegionLayout
    reference_sizes: list[tuple[int, int]] = field(default_factory=list)  # scaled (w, h) per ref
    spatial_stride: int = SPATIAL_STRIDE  # s: pixels per latent cell


def check_canvas_size(height: int, width: int, spatial_stride: int = SPATIAL_STRIDE, patch_size: int = PATCH_SIZE) -> None:
    multiple = spatial_stride * patch_size
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            raise MagrefInputError(
                f"Canvas {name} {v} is not a positive multiple of {multiple} (VAE stride {spatial_stride} x patch {patch_size}).",
                f"use e.g. --{name} {max(multiple, round((v if isinstance(v, int) else 0) / multiple) * multiple)}.",
            )


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (the official `process_refimg` behaviour
    for RGBA, extended to LA and palette images with a transparent colour)."""
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def fit_size(img_w: int, img_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest size with the image's aspect ratio that fits the box (official rounding: int())."""
    img_ratio, box_ratio = img_w / img_h, box_w / box_h
    if img_ratio > box_ratio:
        new_w, new_h = box_w, int(box_w / img_ratio)
    else:
        new_h, new_w = box_h, int(box_h * img_ratio)
    # The official code would crash on a 0-pixel side; a 1-pixel sliver is the useful answer.
    return max(1, new_w), max(1, new_h)


def letterbox(image: Image.Image, box_w: int, box_h: int) -> tuple[Image.Image, int, int]:
    """Scale to fit (LANCZOS) and return the image with its left/top offset inside the box."""
    new_w, new_h = fit_size(image.width, image.height, box_w, box_h)
    scaled = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    return scaled, (box_w - new_w) // 2, (box_h - new_h) // 2


def latent_mask_from_pixels(pixel_mask: np.ndarray, stride: int = SPATIAL_STRIDE) -> np.ndarray:
    """A latent cell is 1 if any pixel of its stride x stride patch is 1."""
    h, w = pixel_mask.shape
    patches = pixel_mask[: h - h % stride, : w - w % stride].reshape(h // stride, stride, w // stride, stride)
    return patches.max(axis=(1, 3)).astype(np.uint8)


def compose_references(
    images: Sequence[Image.Image],
    height: int,
    width: int,
    layout: RegionLayout | dict | str | Path | None = None,
    layout_seed: int | None = None,
    spatial_stride: int = SPATIAL_STRIDE,
    patch_size: int = PATCH_SIZE,
) -> Composition:
    """Letter-box every reference into its region of one white canvas and build the masks.

    Layout: an explicit `layout` (RegionLayout, dict or JSON path) wins; else `layout_seed`
    gives the official random placement for `random.seed(layout_seed)`; else the official grid
    in reading order (reference 0 top-left). `spatial_stride` and `patch_size` are the model's
    (VAE stride, transformer patch): they set the latent mask's cells and the size multiple.
    """
    check_canvas_size(height, width, spatial_stride, patch_size)
    images = list(images)
    if layout is None:
        grid_size_for(len(images))  # 0 or > 16 references: clear error
        if layout_seed is None:
            region_layout = RegionLayout.grid(len(images), height, width)
        else:
            region_layout = RegionLayout.official_random(len(images), height, width, int(layout_seed))
    elif isinstance(layout, RegionLayout):
        region_layout = layout
    else:
        region_layout = RegionLayout.from_json(layout, height, width)
    if (region_layout.height, region_layout.width) != (height, width):
        raise MagrefInputError(
            f"The layout is for a {region_layout.width}x{region_layout.height} canvas but the canvas is {width}x{height}.",
            "make the layout's width/height match --width/--height (or leave them out of the file).",
        )
    if not images:
        raise MagrefInputError("No reference image was given.", "pass at least one reference image.")
    region_layout.validate(len(images))

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pixel_mask = np.zeros((height, width), dtype=np.uint8)
    sizes: list[tuple[int, int]] = [(0, 0)] * len(images)
    for ref, k in region_layout.placement:
        x0, y0, x1, y1 = region_layout.cells[k]
        scaled, dx, dy = letterbox(to_rgb_on_white(images[ref]), x1 - x0, y1 - y0)
        # Pasting only the scaled image (not its white padding) equals the official paste for
        # disjoint cells, and keeps earlier subjects visible when user boxes overlap.
        canvas.paste(scaled, (x0 + dx, y0 + dy))
        pixel_mask[y0 + dy : y0 + dy + scaled.height, x0 + dx : x0 + dx + scaled.width] = 1
        sizes[ref] = scaled.size
    return Composition(
        canvas=canvas,
        pixel_mask=pixel_mask,
        latent_mask=latent_mask_from_pixels(pixel_mask, spatial_stride),
        latent_blocks=region_layout.latent_blocks(spatial_stride),
        layout=region_layout,
        reference_sizes=sizes,
        spatial_stride=spatial_stride,
    )


def mask_image(pixel_mask: np.ndarray) -> Image.Image:
    """The pixel mask as a 0/255 greyscale image."""
    return Image.fromarray((pixel_mask > 0).astype(np.uint8) * 255, mode="L")
