"""Subject extraction: find the subjects of a clip in its own frames and cut them out.

Backends (pick with `magref prepare --extractor NAME`):
- `opencv` (offline, no downloads): faces with OpenCV's bundled Haar cascade (crops around the
  face, kind "face"); moving subjects as foreground against the clip's median background,
  refined with GrabCut (RGBA cut-outs, kind "object").
- `masks`: ground-truth masks from a sidecar `<video>.masks.npz` (`masks`: S x F x H x W bool at
  the source resolution and frame rate, `kinds`: S strings), as written by a procedural renderer.
- `detect-segment`: open-vocabulary detection (OWLv2 / OWL-ViT / Grounding-DINO via
  transformers) + SAM masks, from weights the user has (`--detector PATH --segmenter PATH`).
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


def cutout(frame: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    x0, y0, x1, y1 = box
    rgba = np.dstack([frame, (mask > 0).astype(np.uint8) * 255])[y0:y1, x0:x1]
    return Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA")


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
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
            subjects.append(Subject(cutout(ref, np.ones((h, w), np.uint8), box), box, "face"))
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
            box = mask_bbox(mask)
            if box is not None:
                subjects.append(Subject(cutout(ref, mask, box), box, "object"))
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
            box = mask_bbox(mask)
            if box is not None:
                subjects.append(Subject(cutout(ref, mask, box), box, kind))
        return subjects


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class DetectSegmentExtractor:
    """Open-vocabulary detection (OWLv2, OWL-ViT or Grounding-DINO through transformers'
    zero-shot detection classes) finds the subjects; SAM segments each box. Both load with
    `from_pretrained` from a local folder (or a hub id, fetched only because the user named it)."""

    name = "detect-segment"
    QUERIES = {"a photo of a human face": "face", "a photo of a person": "person", "a photo of an animal": "animal", "a photo of an object": "object"}

    def __init__(self, detector: str | None = None, segmenter: str | None = None, threshold: float = 0.2, max_subjects: int = 3):
        if not detector or not segmenter:
            raise MagrefInputError(
                "The detect-segment extractor needs detector and segmenter weights.",
                "pass --detector PATH (e.g. a local google/owlv2-base-patch16-ensemble) and --segmenter PATH (e.g. facebook/sam-vit-base).",
            )
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel

        self.torch = torch
        try:
            self.det_proc = AutoProcessor.from_pretrained(detector)
            self.det = AutoModelForZeroShotObjectDetection.from_pretrained(detector).eval()
            self.seg_proc = AutoProcessor.from_pretrained(segmenter)
            self.seg = SamModel.from_pretrained(segmenter).eval()
        except (OSError, ValueError) as e:
            raise MagrefInputError(f"Could not load the detector/segmenter ({str(e).splitlines()[0][:200]}).", "check --detector and --segmenter.") from None
        self.threshold, self.max_subjects = threshold, max_subjects

    def __call__(self, frames: np.ndarray, context: dict) -> list[Subject]:
        torch = self.torch
        ref = frames[len(frames) // 2]
        h, w, _ = ref.shape
        image = Image.fromarray(ref)
        queries = list(self.QUERIES)
        with torch.no_grad():
            inputs = self.det_proc(text=[queries], images=image, return_tensors="pt", padding="max_length", truncation=True)
            out = self.det(**inputs)
        post = getattr(self.det_proc, "post_process_grounded_object_detection", None) or self.det_proc.post_process_object_detection
        res = post(out, threshold=self.threshold, target_sizes=[(h, w)])[0]
        order = res["scores"].argsort(descending=True).tolist()
        kept: list[tuple[list[float], str]] = []
        for i in order:
            box = [float(v) for v in res["boxes"][i]]
            box = [max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])]
            if box[2] - box[0] < 4 or box[3] - box[1] < 4 or any(_iou(box, k[0]) > 0.5 for k in kept):
                continue
            label = res["labels"][i]
            kept.append((box, self.QUERIES[queries[int(label)]] if not isinstance(label, str) else self.QUERIES.get(label, "object")))
            if len(kept) == self.max_subjects:
                break
        if not kept:
            return []
        with torch.no_grad():
            seg_in = self.seg_proc(images=image, input_boxes=[[k[0] for k in kept]], return_tensors="pt")
            seg_out = self.seg(**seg_in, multimask_output=False)
        masks = self.seg_proc.post_process_masks(seg_out.pred_masks, seg_in["original_sizes"], seg_in["reshaped_input_sizes"])[0][:, 0].numpy()
        subjects = []
        for (box, kind), mask in zip(kept, masks):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros((h, w), bool)
            inside[y0:y1, x0:x1] = True
            mask = mask & inside
            if mask.sum() < 0.05 * inside.sum():  # SAM found nothing in its box: keep the box itself
                mask = inside
            b = mask_bbox(mask)
            if b is not None:
                subjects.append(Subject(cutout(ref, mask, b), b, kind))
        return subjects


EXTRACTORS = {"opencv": OpenCVExtractor, "masks": MaskSidecarExtractor, "detect-segment": DetectSegmentExtractor}


def make_extractor(name: str, **options) -> Extractor:
    if name not in EXTRACTORS:
        raise MagrefInputError(f"Unknown subject extractor {name!r}.", f"use one of {', '.join(EXTRACTORS)}.")
    if name == "detect-segment":
        return DetectSegmentExtractor(**options)
    return EXTRACTORS[name]()
