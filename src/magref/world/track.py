"""A learnt motion test for the miniature world: where is each held-out subject in each frame?

`evaluate.trajectory` tracks a subject by its sprite's colours; through the shipped VAE the colours
spill into the scenes', and the motion test tops out at 0.48 / 0.40 / 0.35 for 1 / 2 / 3 subjects
on decoded ground truth (chance 0.20; docs/miniature-world.md). This tracker is trained, like the
learnt identity test (`identify.py`), on what the eye sees after that VAE: world clips of 1-3
held-out subjects, rendered and decoded, each frame labelled with every subject's mask. It predicts
one mask per held-out identity at a quarter of the frame's resolution; a subject's trajectory is
its mask's centroid and area per frame, classified by the same rule as the colour tracker's
(`evaluate.classify_motion`). An evaluator only: the generator never sees it.

    magref world tracker --size 128 --out ~/.cache/magref/tracker128   # ships in assets/world/tracker128
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import sha256_file
from .clips import make_clip
from .identities import identity_ids
from .identify import fit, heldout_clips, to_classifier_size, to_input, vae_name, vae_round_trip
from .render import identity

TRACKER_PATHS = {128: Path(__file__).resolve().parent.parent / "assets" / "world" / "tracker128"}
CELL = 4  # the masks' cell in the classifier's 64 px frame: 16x16 cells


class SubjectTracker(nn.Module):
    """(B, 3, 64, 64) frames in [0, 1] -> (B, len(ids), 16, 16) mask logits, one map per identity.
    The identity test's trunk without its last stride, then dilated layers: a subject fills a
    fifth of the frame, so each cell must see one whole."""

    def __init__(self, ids: list[int], width: int = 48):
        super().__init__()
        self.ids, w = list(ids), width

        def block(cin, cout, stride, dilation=1):
            return [nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, w // 2, 2),  # 32x32
            *block(w // 2, w, 1),
            *block(w, 2 * w, 2),  # 16x16
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 2 * w, 1, 2),
            *block(2 * w, 2 * w, 1, 4),
        )
        self.head = nn.Conv2d(2 * w, len(self.ids), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1))


def cell_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(n, F, size, size) bool masks -> (n, F, 16, 16) uint8: the share of each cell the subject
    covers (0-255), at the classifier's 64 px as `to_classifier_size` shows the frame."""
    n, f = masks.shape[:2]
    s = size // (64 // CELL)
    return (masks.reshape(n, f, 64 // CELL, s, 64 // CELL, s).mean((3, 5)) * 255).round().astype(np.uint8)


def world_tracks(clips: int, seed: int, vae=None, frames: int = 13, batch: int = 8, progress=None, size: int = 128):
    """Frames of `clips` random clips of 1-3 held-out subjects, (N, 64, 64, 3) uint8, with their
    subjects' columns (N, 3) int (-1: none) and cell masks (N, 3, 16, 16) uint8; with `vae`, the
    clips as it encodes and decodes them."""
    col = {i: k for k, i in enumerate(identity_ids("heldout"))}
    xs, cols, ms = [], [], []
    for group, x in heldout_clips(clips, 31, seed, vae, frames, batch, progress, size):
        xs.append(x)
        for ids, clip in group:
            c = np.full((frames, 3), -1)
            c[:, : len(ids)] = [col[i] for i in ids]
            m = np.zeros((frames, 3, 64 // CELL, 64 // CELL), np.uint8)
            m[:, : len(ids)] = cell_masks(clip.masks, size).transpose(1, 0, 2, 3)
            cols.append(c)
            ms.append(m)
    return np.concatenate(xs), np.concatenate(cols), np.concatenate(ms)


def targets(cols: np.ndarray, masks: np.ndarray, n_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3) columns and (B, 3, 16, 16) cell masks -> (B, n_ids, 16, 16) float targets and the
    (B, n_ids) bool of the maps whose identity is in the frame's clip."""
    out, shown = torch.zeros(len(cols), n_ids, *masks.shape[2:]), torch.zeros(len(cols), n_ids, dtype=torch.bool)
    for b, k in zip(*np.nonzero(cols >= 0)):
        out[b, cols[b, k]] = torch.from_numpy(masks[b, k]).float() / 255
        shown[b, cols[b, k]] = True
    return out, shown


def tracker_loss(logits: torch.Tensor, target: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """Mask BCE, the clip's own identities' maps and the others' (all empty) weighing alike: a
    subject covers a few cells of one map in 80, and the plain mean would teach empty maps only."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    return bce[shown].mean() + bce[~shown].mean()


def track(model: SubjectTracker, frames: np.ndarray, identity_id: int) -> np.ndarray:
    """(F, 3) as `evaluate.trajectory`: centroid x, y (fractions of the frame) and area fraction of
    the identity's predicted mask (its cells above even odds); nan, nan, 0 where no cell is."""
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(to_input(to_classifier_size(frames)))[:, model.ids.index(identity_id)])  # (F, rows, cols)
    p = p * (p > 0.5)
    n = p.shape[-1]
    centre = (torch.arange(n) + 0.5) / n
    mass = p.sum((1, 2)).clamp(min=1e-9)
    out = torch.stack([(p.sum(1) * centre).sum(1) / mass, (p.sum(2) * centre).sum(1) / mass, p.sum((1, 2)) / n**2], 1).numpy()
    out[out[:, 2] == 0, :2] = np.nan
    return out


def save_tracker(model: SubjectTracker, folder, report: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"kind": "tracker", "ids": model.ids, "width": model.head.in_channels // 2, **report}, indent=1))


def load_tracker(folder) -> SubjectTracker:
    """The tracker saved in `folder`; `.size` is the frame size of the videos it was trained for."""
    from safetensors.torch import load_file

    from ..errors import MagrefInputError

    folder = Path(folder).expanduser()
    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if not (folder / "model.safetensors").is_file() or cfg.get("kind") != "tracker":
        why = (f" (its config.json says kind {cfg['kind']!r})" if "kind" in cfg else " (its config.json has no \"kind\": \"tracker\": another model, "
               "or a tracker written before trackers were tagged)") if cfg else ""
        raise MagrefInputError(f"No subject tracker in {folder}{why}.",
                               "pass a folder that `magref world tracker --out FOLDER` wrote (or the shipped assets/world/tracker128).")
    model = SubjectTracker(cfg["ids"], cfg["width"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.size = cfg["size"]
    model.sha256 = sha256_file(folder / "model.safetensors")  # what tells two trackers apart: a folder can be renamed or reused
    return model.eval()


def tracker_for(size: int) -> SubjectTracker | None:
    """The shipped tracker for videos of `size` px, if one ships (the 64 px miniature has none)."""
    return load_tracker(TRACKER_PATHS[size]) if size in TRACKER_PATHS and (TRACKER_PATHS[size] / "model.safetensors").is_file() else None


def ceiling(model: SubjectTracker, vae=None, clips: int = 48, seed: int = 1, size: int = 128) -> dict:
    """Motion accuracy of this tracker and of the colour tracker, by subject count, on fresh clips
    of 1-3 held-out subjects made as the miniature is trained and sampled (13 frames, the last 9
    shown): rendered, and with `vae` decoded."""
    from .evaluate import classify_motion, trajectory

    out = {}
    for name, v in (("rendered", None), ("decoded", vae)):
        if name == "decoded" and vae is None:
            continue
        hits: dict[str, dict[int, list[bool]]] = {"learnt": {1: [], 2: [], 3: []}, "colour": {1: [], 2: [], 3: []}}
        for k in range(clips):
            rng = np.random.default_rng([37, seed, k])
            n = 1 + k % 3
            ids = [int(i) for i in rng.choice(identity_ids("heldout"), size=n, replace=False)]
            clip = make_clip([identity(i) for i in ids], rng, 13, size, size)
            frames = (clip.frames if v is None else vae_round_trip(v, clip.frames[None])[0])[4:]
            for i, motion in zip(ids, clip.motions):
                hits["learnt"][n].append(classify_motion(track(model, frames, i)) == motion)
                hits["colour"][n].append(classify_motion(trajectory(frames, i)) == motion)
        for tracker, by in hits.items():
            out.update({f"{name}, {tracker}, {n} subjects": round(float(np.mean(h)), 3) for n, h in by.items() if h})
    return out


def train_tracker(out, vae_path, clips: int = 600, steps: int = 3000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                  ceiling_clips: int = 144, log=print, size: int = 128, device: str | torch.device = "cpu") -> dict:
    """Render and VAE-decode the training clips, fit the tracker, report its ceiling, save."""
    import time

    from diffusers import AutoencoderKLWan
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    t0 = time.time()
    device = torch.device(device)
    vae = AutoencoderKLWan.from_pretrained(str(vae_path), torch_dtype=torch.float32).eval().to(device)
    with tqdm(total=2 * clips, desc="tracker data", unit="clip") as bar:
        decoded = world_tracks(clips, seed, vae, progress=bar.update, size=size)
        rendered = world_tracks(clips, seed + 1000, None, progress=bar.update, size=size)
    x, cols, masks = (np.concatenate([d, r]) for d, r in zip(decoded, rendered))
    ids = identity_ids("heldout")

    def loss_of(logits, idx):
        target, shown = targets(cols[idx], masks[idx], len(ids))
        return tracker_loss(logits, target.to(logits.device), shown.to(logits.device))

    model = fit(SubjectTracker(ids), x, loss_of, steps, batch, lr, seed, device, "tracker")
    report = {"clips": clips, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "vae": vae_name(vae_path), "size": size,
              "ceiling": ceiling(model, vae, ceiling_clips, size=size), "minutes": round((time.time() - t0) / 60, 1)}
    save_tracker(model, out, report)
    log(f"world tracker: {report['ceiling']} in {report['minutes']} min -> {out}")
    return report
