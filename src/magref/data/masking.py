"""Region-aware dynamic masking: a fresh random layout of the subjects for every sample.

Training composes through the same `compose_references` as inference, so a layout means the
same thing in both. A layout is drawn by: dropping some subjects (at least one stays), shuffling
their order, then either the official grid with official random placement (sometimes, so the
inference layouts are seen) or a random rows x cols partition of the canvas in which each
subject gets a random sub-box of random scale and position inside its own cell. Optionally
(`p_source_boxes`) the layout is the subjects' own boxes in the clip, where their cut-outs were
taken: the reference then sits where the subject is, a local copy that a model trained from
scratch learns long before the non-local one (the miniature world's curriculum). And optionally
(`p_source_order`) a grid or random layout gives its regions to the subjects in their
left-to-right order in the clip: the canvas then says which subject goes where, which a small
model needs to keep several subjects apart (with the order shuffled it averages their looks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..composition import SPATIAL_STRIDE, RegionLayout


@dataclass
class LayoutSampler:
    p_official_grid: float = 0.3
    p_drop: float = 0.2  # each subject is dropped with this probability (one always stays)
    min_scale: float = 0.5  # sub-box side as a fraction of its cell side
    max_cells: int = 8
    p_source_boxes: float = 0.0
    p_source_order: float = 0.0

    def __call__(self, num_subjects: int, height: int, width: int, rng: random.Random,
                 source_boxes: list[tuple[int, int, int, int]] | None = None) -> tuple[list[int], RegionLayout]:
        """Returns the kept subject indices (in canvas order) and their layout. `source_boxes`:
        each subject's box in the clip (x0, y0, x1, y1), used with probability `p_source_boxes`,
        and whose left-to-right order the regions keep with probability `p_source_order`."""
        keep = [i for i in range(num_subjects) if rng.random() >= self.p_drop] or [rng.randrange(num_subjects)]
        keep = keep[: self.max_cells]
        rng.shuffle(keep)
        n = len(keep)
        if self.p_source_boxes > 0 and source_boxes is not None and rng.random() < self.p_source_boxes:
            boxes = [source_boxes[i] for i in keep]
            if all(0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in boxes):  # else: boxes of another frame size
                return keep, RegionLayout.from_boxes(boxes, height, width)
        if rng.random() < self.p_official_grid:
            return self._ordered(keep, RegionLayout.official_random(n, height, width, rng.randrange(2**31)), rng, source_boxes)
        rows = rng.randint(1, n)
        cols = -(-n // rows)
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        rng.shuffle(cells)
        boxes = []
        for r, c in cells[:n]:
            x0, x1 = width * c // cols, width * (c + 1) // cols
            y0, y1 = height * r // rows, height * (r + 1) // rows
            w = max(SPATIAL_STRIDE, int((x1 - x0) * rng.uniform(self.min_scale, 1.0)))
            h = max(SPATIAL_STRIDE, int((y1 - y0) * rng.uniform(self.min_scale, 1.0)))
            bx = x0 + rng.randint(0, max(0, x1 - x0 - w))
            by = y0 + rng.randint(0, max(0, y1 - y0 - h))
            boxes.append((bx, by, min(width, bx + w), min(height, by + h)))
        return self._ordered(keep, RegionLayout.from_boxes(boxes, height, width), rng, source_boxes)

    def _ordered(self, keep: list[int], layout: RegionLayout, rng: random.Random, source_boxes) -> tuple[list[int], RegionLayout]:
        """With probability `p_source_order`: the same regions, given to the subjects so that
        their left-to-right order (then top-to-bottom) is the subjects' order in the clip."""
        if not (self.p_source_order > 0 and source_boxes is not None and rng.random() < self.p_source_order):
            return keep, layout
        centre = lambda b: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)  # noqa: E731
        regions = sorted(layout.placement, key=lambda rc: centre(layout.cells[rc[1]]))
        subjects = sorted(keep, key=lambda i: centre(source_boxes[i]))
        ordered = list(keep)
        for (ref, _), subject in zip(regions, subjects):
            ordered[ref] = subject
        return ordered, layout
