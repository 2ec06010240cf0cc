"""Evaluation with known truth: the world knows every identity and every motion.

- identity: is the referenced identity recognisable in the video? For each reference, the
  video is matched (region colour statistics, `bench.metrics.subject_colour`) against the true
  identity's sprite and against distractor identities of the same kind; top-1 = the true one
  matches best. Reported as top-1 accuracy and as the margin over the best distractor.
- motion (text alignment): the subject is located in every frame by back-projecting its colour
  histogram; the trajectory (centroid x, y and area) is classified into the world's motions and
  compared with the caption's.
- quality: `bench.metrics.quality` (flicker and noise penalties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..bench.metrics import MetricInput, _hs_hist, quality, subject_colour
from ..composition import to_rgb_on_white
from .build import identity_ids
from .clips import MOTIONS
from .render import SCENES, identity, render_subject


def sprite_on_white(identity_id: int, size: int = 64) -> Image.Image:
    return to_rgb_on_white(render_subject(identity(identity_id), size))


def identity_match(frames: np.ndarray, true_id: int, distractors: list[int]) -> tuple[bool, float]:
    x = MetricInput(frames, [], "")
    score = lambda i: subject_colour(x, render_subject(identity(i), 64))  # noqa: E731
    true = score(true_id)
    best_other = max(score(i) for i in distractors)
    return true > best_other, true - best_other


def trajectory(frames: np.ndarray, identity_id: int) -> np.ndarray:
    """(F, 3): centroid x, centroid y (fractions of the frame) and area fraction of the pixels
    whose colours belong to the identity's sprite."""
    import cv2

    sprite = np.asarray(render_subject(identity(identity_id), 64))
    hist = _hs_hist(sprite[..., :3], sprite[..., 3]).reshape(18, 8).astype(np.float32)
    hist /= max(hist.max(), 1e-9)
    out = []
    for frame in frames:
        hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV)
        prob = cv2.calcBackProject([hsv], [0, 1], (hist * 255).astype(np.float32), [0, 180, 0, 256], 1) / 255.0
        mask = prob > 0.3
        h, w = mask.shape
        if mask.sum() < 4:
            out.append((np.nan, np.nan, 0.0))
            continue
        ys, xs = np.nonzero(mask)
        out.append((xs.mean() / w, ys.mean() / h, mask.mean()))
    return np.asarray(out)


def classify_motion(traj: np.ndarray) -> str:
    ok = ~np.isnan(traj[:, 0])
    if ok.sum() < 3:
        return "unknown"
    t = np.linspace(0, 1, len(traj))[ok]
    x, y, a = traj[ok, 0], traj[ok, 1], traj[ok, 2]
    dx = np.polyfit(t, x, 1)[0]
    da = np.polyfit(t, np.sqrt(a + 1e-9), 1)[0] / max(np.sqrt(a.mean()), 1e-6)
    dy = y.max() - y.min()
    scores = {
        "moves from left to right": dx,
        "moves from right to left": -dx,
        "comes closer": 0.6 * da,
        "moves away": -0.6 * da,
        "jumps up and down": dy - abs(dx),
    }
    return max(scores, key=scores.get)


@dataclass
class EvalCase:
    ids: list[int]
    motions: list[str]
    scene: str
    prompt: str
    seed: int


def eval_cases(subjects: int, n: int, seed: int = 0) -> list[EvalCase]:
    """Held-out identities only; one motion per subject; captions in the training template."""
    pool = identity_ids("heldout")
    cases = []
    for k in range(n):
        rng = np.random.default_rng([99, seed, subjects, k])
        ids = [int(i) for i in rng.choice(pool, size=subjects, replace=False)]
        motions = [str(rng.choice(list(MOTIONS))) for _ in ids]
        scene = str(rng.choice(SCENES))
        parts = [f"{identity(i).describe()} {m}" for i, m in zip(ids, motions)]
        prompt = (" and ".join(parts) if subjects <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]) + f" in a {scene}."
        cases.append(EvalCase(ids, motions, scene, prompt[0].upper() + prompt[1:], seed * 1000 + k))
    return cases


def distractors_for(true_id: int, k: int, rng: np.random.Generator) -> list[int]:
    kind = identity(true_id).kind
    pool = [i for i in identity_ids("heldout") if i != true_id and identity(i).kind == kind]
    return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]


def score_video(frames: np.ndarray, case: EvalCase, num_distractors: int = 7) -> dict:
    rng = np.random.default_rng([7, case.seed])
    hits, margins, motion_ok = [], [], []
    for i, motion in zip(case.ids, case.motions):
        hit, margin = identity_match(frames, i, distractors_for(i, num_distractors, rng))
        hits.append(hit)
        margins.append(margin)
        motion_ok.append(classify_motion(trajectory(frames, i)) == motion)
    return {"identity_top1": float(np.mean(hits)), "identity_margin": float(np.mean(margins)),
            "motion_accuracy": float(np.mean(motion_ok)), "quality": quality(MetricInput(frames, [], ""))}
