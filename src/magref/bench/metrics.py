"""Metric registry. Each metric says what it needs; one whose package or weights are missing is
reported as `not computed (reason)`, never as a number.

Built in, weight-free (labelled as baselines, not as learned similarity):
- subject_colour: best region-vs-reference hue/saturation histogram intersection, per reference
- temporal_flicker: mean absolute change between consecutive frames (lower is better)
- motion: mean Farneback optical-flow magnitude (pixels per frame)
- quality: 1 - flicker penalty - noise penalty, in [0, 1] (high-frequency energy marks noise)
- copy_paste: how close the video is to a static paste of a reference (1 = a pasted still)
Needing weights the user supplies (`--weights KEY=PATH`, a transformers model folder or hub id):
face_identity (face), clip_score (clip), dino_subject (dino). The OpenS2V-Eval metrics
(aesthetics, motion smoothness and amplitude, FaceSim-Cur, GmeScore, NexusScore, NaturalScore)
come from the OpenS2V-Eval scorers themselves (`--opens2v FILE`, their per-case values) and are
combined by `opens2v_total` with the published v1.1 weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image


@dataclass
class MetricInput:
    frames: np.ndarray  # (F, H, W, 3) uint8
    refs: list[tuple[Image.Image, str]]  # (image, kind)
    prompt: str


@dataclass
class Metric:
    name: str
    description: str
    higher_is_better: bool
    per_reference: bool  # scored per reference (then averaged) or per video
    fn: Callable[..., float] | None = None
    packages: tuple[str, ...] = ()
    weights_key: str | None = None  # key of the user-supplied weights path
    kinds: tuple[str, ...] | None = None  # reference kinds it applies to
    label: str = ""

    def unavailable(self, weights: dict[str, str]) -> str | None:
        for pkg in self.packages:
            if importlib.util.find_spec(pkg) is None:
                return f"package {pkg} is not installed"
        if self.weights_key and not weights.get(self.weights_key):
            return f"no weights given (--weights {self.weights_key}=PATH)"
        if self.fn is None:
            return "no implementation for these weights yet"
        return None


# ----------------------------------------------------------------------------------------------
# weight-free metrics
# ----------------------------------------------------------------------------------------------
def hue_saturation_histogram(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    m = None if mask is None else (mask > 0).astype(np.uint8)
    h = cv2.calcHist([hsv], [0, 1], m, [18, 8], [0, 180, 0, 256]).ravel()
    return h / max(h.sum(), 1e-9)


def _reference_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """RGB and a foreground mask: alpha when there is one, else everything not near-white."""
    if image.mode in ("RGBA", "LA"):
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[..., :3], rgba[..., 3] > 127
    rgb = np.asarray(image.convert("RGB"))
    mask = rgb.min(-1) < 235
    return rgb, mask if mask.any() else np.ones(mask.shape, bool)


def _sample(frames: np.ndarray, n: int = 8) -> np.ndarray:
    return frames[np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)]


def subject_colour(x: MetricInput, ref: Image.Image) -> float:
    rgb, mask = _reference_pixels(ref)
    target = hue_saturation_histogram(rgb, mask.astype(np.uint8))
    scores = []
    for frame in _sample(x.frames):
        h, w, _ = frame.shape
        best = 0.0
        for frac in (0.5, 0.34):  # windows of half and a third of the frame, half-overlapping
            wh, ww = max(8, int(h * frac)), max(8, int(w * frac))
            for y in range(0, h - wh + 1, max(1, wh // 2)):
                for xx in range(0, w - ww + 1, max(1, ww // 2)):
                    best = max(best, float(np.minimum(target, hue_saturation_histogram(frame[y : y + wh, xx : xx + ww])).sum()))
        scores.append(best)
    return float(np.mean(scores))


def temporal_flicker(x: MetricInput) -> float:
    f = x.frames.astype(np.float32) / 255.0
    return float(np.abs(np.diff(f, axis=0)).mean()) if len(f) > 1 else 0.0


def motion(x: MetricInput) -> float:
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in x.frames]
    mags = [np.linalg.norm(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0), axis=-1).mean() for a, b in zip(gray, gray[1:])]
    return float(np.mean(mags)) if mags else 0.0


def _noise_level(frames: np.ndarray) -> float:
    """Share of energy in the finest spatial detail: ~0.1-0.3 for natural or rendered video,
    near 1 for white noise."""
    f = frames.astype(np.float32).mean(-1) / 255.0
    lap = np.abs(f[:, 1:-1, 1:-1] * 4 - f[:, :-2, 1:-1] - f[:, 2:, 1:-1] - f[:, 1:-1, :-2] - f[:, 1:-1, 2:]).mean()
    return float(min(1.0, lap / (4 * max(f.std(), 1e-6))))


def quality(x: MetricInput) -> float:
    return float(max(0.0, 1.0 - 2.0 * temporal_flicker(x) - _noise_level(x.frames)))


def copy_paste(x: MetricInput, ref: Image.Image) -> float:
    """1 when the video is a still that contains the reference as it is; 0 for a moving video
    or one without a pixel copy. Combines template correlation with stillness."""
    import cv2

    from ..composition import to_rgb_on_white

    rgb = np.asarray(to_rgb_on_white(ref))  # as the canvas shows it
    frame = x.frames[len(x.frames) // 2]
    h, w, _ = frame.shape
    best = -1.0
    for frac in (1.0, 0.5, 0.34):  # the canvas layouts put a reference in a cell of these sizes
        scale = min(w * frac / rgb.shape[1], h / rgb.shape[0])
        tw, th = max(4, int(rgb.shape[1] * scale)), max(4, int(rgb.shape[0] * scale))
        if tw > w or th > h:
            continue
        templ = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
        best = max(best, float(cv2.matchTemplate(frame, templ, cv2.TM_CCOEFF_NORMED).max()))
    stillness = float(np.exp(-temporal_flicker(x) / 0.01))
    return float(max(0.0, best) * stillness)


# ----------------------------------------------------------------------------------------------
# metrics with user-supplied weights (transformers models from a folder or hub id)
# ----------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str], tuple] = {}


def _load(kind: str, path: str):
    key = (kind, path)
    if key not in _MODELS:
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

        if kind == "clip":
            _MODELS[key] = (AutoProcessor.from_pretrained(path), CLIPModel.from_pretrained(path).eval())
        else:
            _MODELS[key] = (AutoImageProcessor.from_pretrained(path), AutoModel.from_pretrained(path).eval())
    return _MODELS[key]


def _embed_images(kind: str, path: str, images: list[Image.Image]):
    import torch

    proc, model = _load(kind, path)
    with torch.no_grad():
        inputs = proc(images=images, return_tensors="pt")
        if kind == "clip":
            out = model.get_image_features(pixel_values=inputs["pixel_values"])
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:  # DINO-style backbones: the class token of the last layer
            out = model(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 0]
    return torch.nn.functional.normalize(out.float(), dim=-1)


def clip_score(x: MetricInput, weights: dict) -> float:
    """Mean cosine similarity of the prompt and sampled frames in CLIP space, x100 (CLIPScore
    without the clamp)."""
    import torch

    proc, model = _load("clip", weights["clip"])
    frames = [Image.fromarray(f) for f in _sample(x.frames)]
    with torch.no_grad():
        text = proc(text=[x.prompt], return_tensors="pt", padding=True, truncation=True)
        t = model.get_text_features(input_ids=text["input_ids"], attention_mask=text.get("attention_mask"))
        t = t if isinstance(t, torch.Tensor) else t.pooler_output
    t = torch.nn.functional.normalize(t.float(), dim=-1)
    return float((_embed_images("clip", weights["clip"], frames) @ t.T).mean() * 100)


def _windows(frame: np.ndarray) -> list[Image.Image]:
    h, w, _ = frame.shape
    crops = [Image.fromarray(frame)]
    for frac in (0.5,):
        wh, ww = int(h * frac), int(w * frac)
        for y in (0, (h - wh) // 2, h - wh):
            for xx in (0, (w - ww) // 2, w - ww):
                crops.append(Image.fromarray(frame[y : y + wh, xx : xx + ww]))
    return crops


def dino_subject(x: MetricInput, ref: Image.Image, weights: dict) -> float:
    """Best region-vs-reference cosine similarity of DINO class tokens, averaged over frames."""
    from ..composition import to_rgb_on_white

    r = _embed_images("dino", weights["dino"], [to_rgb_on_white(ref)])
    scores = [float((_embed_images("dino", weights["dino"], _windows(f)) @ r.T).max()) for f in _sample(x.frames, 4)]
    return float(np.mean(scores))


def face_identity(x: MetricInput, ref: Image.Image, weights: dict) -> float:
    """Faces found with OpenCV's bundled cascade (the whole image when none is found), embedded by
    the user's face model (a transformers image model); best cosine similarity to the reference
    face, averaged over frames."""
    import cv2

    from ..composition import to_rgb_on_white

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def faces(rgb: np.ndarray) -> list[Image.Image]:
        found = cascade.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 4, minSize=(16, 16))
        return [Image.fromarray(rgb[y : y + h, x0 : x0 + w]) for x0, y, w, h in found] or [Image.fromarray(rgb)]

    r = _embed_images("face", weights["face"], faces(np.asarray(to_rgb_on_white(ref)))[:1])
    return float(np.mean([float((_embed_images("face", weights["face"], faces(f)) @ r.T).max()) for f in _sample(x.frames, 4)]))


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("subject_colour", "region vs reference hue/saturation histogram intersection", True, True, subject_colour,
               kinds=("object", "animal", "face", "background"), label="weight-free colour baseline"),
        Metric("quality", "1 - flicker and noise penalties", True, False, quality, label="weight-free"),
        Metric("temporal_flicker", "mean absolute change between consecutive frames", False, False, temporal_flicker, label="weight-free"),
        Metric("motion", "mean optical-flow magnitude (px/frame)", True, False, motion, packages=("cv2",), label="OpenCV Farneback"),
        Metric("copy_paste", "closeness to a static paste of a reference (flag > 0.8)", False, True, copy_paste, packages=("cv2",), label="weight-free"),
        Metric("face_identity", "face embedding cosine similarity, reference vs generated faces", True, True, face_identity,
               packages=("cv2",), weights_key="face", kinds=("face",), label="face embedding model (user weights)"),
        Metric("clip_score", "CLIP text-video alignment (x100)", True, False, clip_score, weights_key="clip", label="CLIP (user weights)"),
        Metric("dino_subject", "DINO region vs reference similarity", True, True, dino_subject, weights_key="dino",
               kinds=("object", "animal"), label="DINO (user weights)"),
    ]
}
COPY_PASTE_FLAG = 0.8


@dataclass
class Score:
    value: float | None
    reason: str | None = None  # why it was not computed
    per_reference: list[float] = field(default_factory=list)


def score_video(x: MetricInput, weights: dict[str, str], names: list[str] | None = None) -> dict[str, Score]:
    out = {}
    for name, metric in REGISTRY.items():
        if names and name not in names:
            continue
        reason = metric.unavailable(weights)
        if reason:
            out[name] = Score(None, reason)
            continue
        if metric.per_reference:
            refs = [r for r, kind in x.refs if metric.kinds is None or kind in metric.kinds]
            if not refs:
                out[name] = Score(None, "no reference of a kind it scores")
                continue
            values = [metric.fn(x, r, weights) if metric.weights_key else metric.fn(x, r) for r in refs]
            out[name] = Score(float(np.mean(values)), per_reference=values)
        else:
            out[name] = Score(metric.fn(x, weights) if metric.weights_key else metric.fn(x))
    return out


# ----------------------------------------------------------------------------------------------
# OpenS2V-Eval total (leaderboard v1.1 weighting)
# ----------------------------------------------------------------------------------------------
OPENS2V_WEIGHTS = {
    "open": {"aesthetics": 0.16, "motion_smoothness": 0.06, "motion_amplitude": 0.02, "facesim": 0.20, "gme": 0.12, "nexus": 0.20, "natural": 0.24},
    "human": {"aesthetics": 0.18, "motion_smoothness": 0.09, "motion_amplitude": 0.03, "facesim": 0.25, "gme": 0.15, "natural": 0.30},
}


def opens2v_normalise(name: str, value: float) -> float:
    """The leaderboard's rescaling before weighting (inputs as the OpenS2V scorers report them)."""
    if name == "aesthetics":
        return (min(max(value, 4.0), 7.0) - 4.0) / 3.0
    if name == "nexus":
        return value / 0.05
    if name == "natural":
        return (value - 1.0) / 4.0
    return value


def opens2v_total(values: dict[str, float], domain: str = "open") -> float:
    """Weighted total in percent; every weighted metric must be present."""
    weights = OPENS2V_WEIGHTS[domain]
    missing = [k for k in weights if k not in values]
    if missing:
        raise ValueError(f"OpenS2V total needs {missing}")
    return 100.0 * sum(w * opens2v_normalise(k, values[k]) for k, w in weights.items())
