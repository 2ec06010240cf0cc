"""A learnt identity test for the miniature world: which held-out identities are in a frame?

The colour matcher (`evaluate.identity_match`) compares hue histograms; through the miniature's
VAE it recognises the world's own rendering of a held-out subject in only 55 % of clips, so it
cannot tell a model that draws the subject from one that does not. This classifier is trained on
what the eye sees after that VAE: world clips of 1-3 held-out subjects, rendered and encoded +
decoded by the shipped VAE, each frame labelled with the identities whose mask shows in it.
It is an evaluator only (like a face-recognition network that knows the test people): the
generator never sees it, and it knows no training identity.

Scoring (`identify_video`): the mean logit of each identity over the video's frames; a subject
counts as recognised when its logit beats those of its 7 distractors (the same distractors as
the colour matcher).

    magref world identifier --out ~/.cache/magref/identifier   # ~35 min on one core; ships in assets/world/identifier
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .identities import distractors_for, identity_ids
from .clips import make_clip
from .render import identity

IDENTIFIER_PATH = Path(__file__).resolve().parent.parent / "assets" / "world" / "identifier"
# The shipped identity tests by the frame size of the videos they judge: each was trained on clips
# of that size as the shipped 8x VAE decodes them (64: the current miniature; 128: 8x8 tokens per
# latent frame, decoded truth 0.98 / 0.93 / 0.83 for 1 / 2 / 3 subjects, docs/miniature-world.md).
IDENTIFIER_PATHS = {64: IDENTIFIER_PATH, 128: IDENTIFIER_PATH.with_name("identifier128")}


def identifier_path(size: int) -> Path:
    """The shipped identity test for videos of `size` px."""
    from ..errors import MagrefInputError

    if size not in IDENTIFIER_PATHS:
        raise MagrefInputError(f"No identity test ships for {size} px videos (only {', '.join(map(str, IDENTIFIER_PATHS))}).",
                               f"train one with `magref world identifier --size {size} --out FOLDER` and pass --identifier FOLDER.")
    return IDENTIFIER_PATHS[size]
MIN_VISIBLE_PIXELS = 30  # a subject counts as shown in a 64x64 frame from this many mask pixels


class IdentityClassifier(nn.Module):
    """(B, 3, 64, 64) frames in [0, 1] -> (B, len(ids)) presence logits. Small on purpose: it
    trains on two CPU cores in minutes; strided convolutions keep the stripes and dots of 64 px."""

    def __init__(self, ids: list[int], width: int = 48):
        super().__init__()
        self.ids = list(ids)
        w = width

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, w // 2, 2),  # 32x32
            *block(w // 2, w, 1),
            *block(w, 2 * w, 2),  # 16x16
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2),  # 8x8
            *block(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(8 * w, len(self.ids))  # mean- and max-pooled features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x * 2 - 1)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


def heldout_clips(clips: int, draw: int, seed: int, vae=None, frames: int = 13, batch: int = 8, progress=None, size: int = 64):
    """Random clips of 1-3 held-out subjects, `batch` at a time (clip k drawn by the rng [draw, seed, k]):
    yields each batch's [(ids, Clip)] and its frames as the evaluators see them, (B * F, 64, 64, 3)
    uint8, made at `size` and, with `vae`, encoded and decoded by it. The learnt tests' data."""
    pool = identity_ids("heldout")
    for start in range(0, clips, batch):
        group = []
        for k in range(start, min(clips, start + batch)):
            rng = np.random.default_rng([draw, seed, k])
            ids = [int(i) for i in rng.choice(pool, size=int(rng.integers(1, 4)), replace=False)]
            group.append((ids, make_clip([identity(i) for i in ids], rng, frames, size, size)))
        video = np.stack([clip.frames for _, clip in group])  # (B, F, H, W, 3)
        if vae is not None:
            video = vae_round_trip(vae, video)
        yield group, to_classifier_size(video.reshape(-1, size, size, 3))
        if progress:
            progress(len(group))


def world_frames(clips: int, seed: int, vae=None, frames: int = 13, batch: int = 8, progress=None, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Frames of `clips` random clips of 1-3 held-out subjects: (N, 64, 64, 3) uint8 and
    (N, 80) bool labels; with `vae`, the clips as that VAE encodes and decodes them. Clips are
    made at `size` and resized to the classifier's 64 px as `identify_video` resizes a video."""
    col = {i: k for k, i in enumerate(identity_ids("heldout"))}
    xs, ys = [], []
    for group, x in heldout_clips(clips, 23, seed, vae, frames, batch, progress, size):
        xs.append(x)
        for ids, clip in group:
            label = np.zeros((frames, len(col)), bool)
            for i, m in zip(ids, clip.masks):
                label[:, col[i]] = m.reshape(frames, -1).sum(1) >= MIN_VISIBLE_PIXELS * (size / 64) ** 2
            ys.append(label)
    return np.concatenate(xs), np.concatenate(ys)


def vae_round_trip(vae, video: np.ndarray) -> np.ndarray:
    """(B, F, H, W, 3) uint8 clips as `vae` encodes and decodes them (the latent's mode)."""
    x = torch.from_numpy(video).permute(0, 4, 1, 2, 3).float().to(next(vae.parameters()).device) / 127.5 - 1
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    return ((rec.permute(0, 2, 3, 4, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def to_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def to_classifier_size(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 frames at the classifier's 64x64 (bilinear), as every video is judged."""
    if frames.shape[1:3] == (64, 64):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BILINEAR)) for f in frames])


def identify_video(model: IdentityClassifier, frames: np.ndarray) -> dict[int, float]:
    """{identity id: mean presence logit over the video's frames (F, H, W, 3) uint8}."""
    frames = to_classifier_size(frames)
    model.eval()
    with torch.no_grad():
        logits = model(to_input(frames)).mean(0)
    return dict(zip(model.ids, logits.tolist()))


def identity_hit(scores: dict[int, float], true_id: int, distractors: list[int]) -> tuple[bool, float]:
    """Recognised: the true identity's logit beats every distractor's; margin = their difference."""
    best_other = max(scores[i] for i in distractors)
    return scores[true_id] > best_other, scores[true_id] - best_other


def save_identifier(model: IdentityClassifier, folder, report: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"ids": model.ids, "width": model.head.in_features // 8, **report}, indent=1))


def load_identifier(folder=IDENTIFIER_PATH) -> IdentityClassifier:
    from safetensors.torch import load_file

    from ..errors import MagrefInputError

    folder = Path(folder).expanduser()
    if not (folder / "model.safetensors").is_file():
        raise MagrefInputError(f"No identity classifier in {folder}.", "train one with `magref world identifier --out FOLDER`.")
    cfg = json.loads((folder / "config.json").read_text())
    model = IdentityClassifier(cfg["ids"], cfg["width"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


def ceiling(model: IdentityClassifier, vae=None, clips: int = 48, seed: int = 1, by_count: bool = False, size: int = 64) -> dict:
    """Identity top-1 (7 distractors, frames 4-12 as a video keeps them) on fresh clips of 1-3
    held-out subjects: the world's rendering, and with `vae` that rendering decoded. `by_count`
    adds the top-1 for clips of 1, 2 and 3 subjects apart (a third of the clips each)."""
    out = {}
    for name, v in (("rendered", None), ("decoded", vae)):
        if name == "decoded" and vae is None:
            continue
        hits: dict[int, list[bool]] = {1: [], 2: [], 3: []}
        for k in range(clips):
            rng = np.random.default_rng([29, seed, k])
            n = 1 + k % 3
            ids = [int(i) for i in rng.choice(identity_ids("heldout"), size=n, replace=False)]
            clip = make_clip([identity(i) for i in ids], rng, 13, size, size)
            frames = clip.frames if v is None else vae_round_trip(v, clip.frames[None])[0]
            scores = identify_video(model, frames[4:])
            for i in ids:
                hits[n].append(identity_hit(scores, i, distractors_for(i, 7, np.random.default_rng([7, k])))[0])
        out[f"{name} top-1"] = float(np.mean(sum(hits.values(), [])))
        if by_count:
            out.update({f"{name} top-1, {n} subjects": float(np.mean(h)) for n, h in hits.items() if h})
    return out


def fit(model: nn.Module, x: np.ndarray, loss_of, steps: int, batch: int, lr: float, seed: int, device, desc: str) -> nn.Module:
    """The evaluators' training loop (this test's and `track.py`'s): AdamW with a one-cycle LR on
    random batches of the frames `x` (N, 64, 64, 3) uint8, lightly jittered in colour and noise;
    `loss_of(model_output, indices)` scores a batch. Leaves the model on the CPU in eval mode."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = np.random.default_rng(seed)
    model.to(device).train()
    bar = tqdm(range(steps), desc=desc, unit="step")
    for _ in bar:
        idx = g.integers(0, len(x), batch)
        inp = to_input(x[idx])
        inp = (inp * torch.empty(batch, 3, 1, 1).uniform_(0.9, 1.1) + torch.randn_like(inp) * 0.02).clamp(0, 1)
        loss = loss_of(model(inp.to(device)), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval().cpu()  # it judges videos on the CPU


def vae_name(vae_path) -> str:
    """How an evaluator's config names its VAE: no machine paths in a shipped config."""
    from ..models import WORLD_VAE_PATH

    return "the shipped miniature's VAE" if Path(vae_path).resolve() == WORLD_VAE_PATH.resolve() else Path(vae_path).name


def train_identifier(out, vae_path, clips: int = 600, steps: int = 2000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                     ceiling_clips: int = 144, log=print, size: int = 64, device: str | torch.device = "cpu") -> dict:
    """Render and VAE-decode the training frames, fit the classifier, report its ceiling, save.
    `size`: the frame size of the model it will judge (its VAE decodes at that size; the
    classifier sees every frame at 64 px). `device`: where the VAE and the classifier run."""
    import time

    from diffusers import AutoencoderKLWan
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    t0 = time.time()
    device = torch.device(device)
    vae = AutoencoderKLWan.from_pretrained(str(vae_path), torch_dtype=torch.float32).eval().to(device)
    with tqdm(total=2 * clips, desc="identifier data", unit="clip") as bar:
        decoded = world_frames(clips, seed, vae, progress=bar.update, size=size)
        rendered = world_frames(clips, seed + 1000, None, progress=bar.update, size=size)  # other clips, as rendered
    x = np.concatenate([decoded[0], rendered[0]])
    y = torch.from_numpy(np.concatenate([decoded[1], rendered[1]])).float()
    model = fit(IdentityClassifier(identity_ids("heldout")), x, lambda out, idx: nn.functional.binary_cross_entropy_with_logits(out, y[idx].to(out.device)),
                steps, batch, lr, seed, device, "identifier")
    report = {"clips": clips, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "vae": vae_name(vae_path), "size": size,
              "ceiling": ceiling(model, vae, ceiling_clips, by_count=True, size=size), "minutes": round((time.time() - t0) / 60, 1)}
    save_identifier(model, out, report)
    log(f"world identifier: {report['ceiling']} in {report['minutes']} min -> {out}")
    return report
