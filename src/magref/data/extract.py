"""Subject extraction: find the subjects of a clip in its own frames and cut them out.

Backends (pick with `magref prepare --extractor NAME`):
- `opencv` (offline, no downloads): faces with OpenCV's bundled Haar cascade (crops around the
  face, kind "face"); moving subjects as foreground against the clip's median background,
  refined with GrabCut (RGBA cut-outs, kind "object").
- `masks`: ground-truth masks from a sidecar `<video>.masks.npz` (`masks`: S x F x H x W bool at
  the source resolution and frame rate, `kinds`: S strings), as written by a procedural renderer.
Real detectors and segmenters (Grounding-DINO + SAM, YOLO-seg) plug in through the same
`Extractor` interface when their weights are available; none ships here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import MagrefInputError
from .shards import Subject


class Extractor(Protocol):
    name: str

    def __call__(self, frames: np.ndarray, context: dict) -> list[Subject]:
        """frames: (F, H, W, 3) uint8 of one clip; context: source path, frame indices, ..."""


def _cutout(frame: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    x0, y0, x1, y1 = box
    rgba = np.dstack([frame, (mask > 0).astype(np.uint8) * 255])[y0:y1, x0:x1]
    return Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA")


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class OpenCVExtractor:
    name = "opencv"

    def __init__(self, max_subjects: int = 3, min_area_frac: float = 0.01, diff_threshold: int = 30):
        import cv2

        self.cv2 = cv2
        self.faces = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.max_subjects, self.min_area_frac, self.diff_threshold = max_subjects, min_area_frac, diff_threshold

    def __call__(self, frames: np.ndarray, context: dict) -> list[Subject]:
        cv2 = self.cv2
        f, h, w, _ = frames.shape
        ref = frames[f // 2]
        subjects: list[Subject] = []
        gray = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)
        for x, y, fw, fh in self.faces.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))[: self.max_subjects]:
            pad = int(0.3 * max(fw, fh))
            box = (max(0, x - pad), max(0, y - pad), min(w, x + fw + pad), min(h, y + fh + pad))
            subjects.append(Subject(_cutout(ref, np.ones((h, w), np.uint8), box), box, "face"))
        if f < 3:
            return subjects
        # The median over the whole video (when given) sees past slow subjects that cover the
        # same pixels for most of one short clip.
        background = context.get("background")
        if background is None:
            background = np.median(frames, axis=0).astype(np.uint8)
        diff = np.abs(ref.astype(np.int16) - background.astype(np.int16)).sum(-1)
        fg = (diff > self.diff_threshold).astype(np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
        order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
        for i in order[: self.max_subjects - len(subjects)]:
            if stats[i, cv2.CC_STAT_AREA] < self.min_area_frac * h * w:
                break
            x, y, bw, bh = stats[i, :4]
            mask = self._grabcut(ref, labels == i, (x, y, bw, bh))
            box = _bbox(mask)
            if box is not None:
                subjects.append(Subject(_cutout(ref, mask, box), box, "object"))
        return subjects

    def _grabcut(self, image: np.ndarray, seed: np.ndarray, rect) -> np.ndarray:
        cv2 = self.cv2
        h, w = seed.shape
        x, y, bw, bh = rect
        pad = max(2, int(0.15 * max(bw, bh)))
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)
        gc = np.full((h, w), cv2.GC_BGD, np.uint8)
        gc[y0:y1, x0:x1] = cv2.GC_PR_BGD
        gc[seed] = cv2.GC_PR_FGD
        try:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
            mask = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
        except cv2.error:  # degenerate colour models: keep the motion mask
            mask = seed.astype(np.uint8)
        return mask if mask.sum() else seed.astype(np.uint8)


class MaskSidecarExtractor:
    name = "masks"

    def __call__(self, frames: np.ndarray, context: dict) -> list[Subject]:
        path = Path(context["source"]).with_suffix(".masks.npz")
        if not path.is_file():
            raise ValueError(f"no ground-truth masks at {path}")
        data = np.load(path)
        masks, kinds = data["masks"], [str(k) for k in data["kinds"]]
        mid = len(context["frame_indices"]) // 2
        src_index = context["frame_indices"][mid]
        ref = frames[mid]
        subjects = []
        for mask_video, kind in zip(masks, kinds):
            mask = np.asarray(Image.fromarray(mask_video[src_index].astype(np.uint8) * 255).resize(ref.shape[1::-1], Image.NEAREST)) > 127
            box = _bbox(mask)
            if box is not None:
                subjects.append(Subject(_cutout(ref, mask, box), box, kind))
        return subjects


EXTRACTORS = {"opencv": OpenCVExtractor, "masks": MaskSidecarExtractor}


def make_extractor(name: str) -> Extractor:
    if name not in EXTRACTORS:
        raise MagrefInputError(f"Unknown subject extractor {name!r}.", f"use one of {', '.join(EXTRACTORS)}.")
    return EXTRACTORS[name]()
