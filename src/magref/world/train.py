"""`magref world train`: the miniature MAGREF, from scratch, on the procedural world.

Stages (each resumable; everything lives under --out, by default ~/.cache/magref/world):
1. vae      a small Wan VAE (base width 16, 16 latent channels) learns to reconstruct world
            frames: single frames first (the causal VAE codes frame 0 alone), then clips;
            per-channel latent mean/std are measured afterwards and stored in its config.
1b. decoder the decoder alone on whole 13-frame clips (encoder frozen: the latent space is fixed).
1c. vae     the whole VAE on 13-frame clips, the loss weighted where subjects are (`VAE_STAGES`).
2. data     single-subject training clips from training identities only (tar shards).
3. dit      the MAGREF transformer (36 input channels) trained with `magref train`'s Trainer:
            flow matching with region-aware dynamic masking. The text and image encoders are
            small, random and frozen: their features still identify words and canvases.
Stage outputs: vae/ (checkpoints), base/ (pipeline before DiT training), data/, dit/ (Trainer run,
dit/final is the trained pipeline). `export_run` (`magref world export`) writes a run as the
bundled model folder. Default budgets: `defaults.MINIATURE_BUDGET`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..defaults import MINIATURE_BUDGET
from ..io import folder_lock
from .build import build_world_dataset
from .identities import TRAIN_IDENTITIES, identity_ids
from .clips import make_clip
from .render import identity

FRAMES, SIZE = 13, 64


ABLATIONS = {
    "none": dict(conditioning="channel", mask_channels=True),  # MAGREF
    "no-mask": dict(conditioning="channel", mask_channels=False),  # mask channels carry zeros
    "tokens": dict(conditioning="tokens", mask_channels=True),  # references as extra tokens (Phantom-style)
}


# The miniature's VAE by spatial stride (temporal stride 4 in both). At 64x64 the official 8x
# stride leaves 8x8 latents, 4x4 = 16 tokens per latent frame after the transformer's 2x2 patch:
# one or two tokens per subject, too few to keep two identities apart. The 4x VAE (one spatial
# level fewer) gives 16x16 latents, 8x8 tokens per frame. diffusers sizes latents from
# `scale_factor_spatial` in the config, not from `dim_mult`, so the 4x VAE says so explicitly.
VAE_GEOMETRIES = {
    8: dict(dim_mult=[1, 2, 4, 4], temperal_downsample=[False, True, True]),
    4: dict(dim_mult=[1, 2, 4], temperal_downsample=[True, True], scale_factor_spatial=4),
}


def miniature_vae(vae_stride: int = 8, z_dim: int = 16):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=16, z_dim=z_dim, num_res_blocks=1, attn_scales=[], **VAE_GEOMETRIES[vae_stride])


def miniature_transformer(ablation: str = "none", z_dim: int = 16, layers: int = 6, heads: int = 4):
    """The miniature's Wan transformer: input [noisy latent z; 4 mask channels; canvas latent z]
    (the tokens ablation: z), width `heads` x 64, `layers` blocks."""
    from diffusers import WanTransformer3DModel

    in_channels = z_dim if ABLATIONS[ablation]["conditioning"] == "tokens" else 2 * z_dim + 4
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=in_channels, out_channels=z_dim,
                                 text_dim=64, freq_dim=64, ffn_dim=3 * 64 * heads, num_layers=layers, cross_attn_norm=True,
                                 qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=64, added_kv_proj_dim=64 * heads, rope_max_seq_len=256)


def miniature_components(seed: int = 0, ablation: str = "none", vae_stride: int = 8, z_dim: int = 16, layers: int = 6, heads: int = 4) -> dict:
    """Same family as the real model, sized for a 2-core CPU. The transformer's input is
    [noisy latent z; 4 mask channels; canvas latent z] (2z + 4 = 36 for the real model's z = 16);
    its width is `heads` x 64 (the real model's head size) with `layers` blocks (6 x 256 shipped)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from ..schedulers import make_scheduler
    from ..tiny import byte_tokenizer
    from ..conditioning import clip_image_processor

    tokenizer = byte_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                                         image_size=56, patch_size=14, projection_dim=32, hidden_act="gelu"))
        vae = miniature_vae(vae_stride, z_dim)
        transformer = miniature_transformer(ablation, z_dim, layers, heads)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, scheduler=make_scheduler("unipc", 3.0),
                image_encoder=image_encoder.eval(), transformer=transformer, image_processor=clip_image_processor(56),
                text_len=226, **ABLATIONS[ablation])  # captions are < 226 bytes; shorter padding, cheaper cross-attention


def world_frames(rng: np.random.Generator, batch: int, frames: int, with_masks: bool = False, p_canvas: float = 0.0):
    """(B, 3, F, H, W) in [-1, 1]: random training-identity clips (1-3 subjects); with_masks also
    returns where any subject is, (B, 1, F, H, W) float {0, 1}. With probability `p_canvas` a
    clip's frame 0 is its subjects' reference canvas instead (sprites on white, an official grid):
    what MAGREF encodes as the condition, and the cut that its canvas-first target makes."""
    pool = identity_ids("train")
    clips, masks = [], []
    for _ in range(batch):
        n = int(rng.integers(1, 4))
        ids = rng.choice(pool, size=n, replace=False)
        clip = make_clip([identity(int(i)) for i in ids], rng, frames=max(frames, 2), height=SIZE, width=SIZE)
        start = int(rng.integers(0, clip.frames.shape[0] - frames + 1))
        video, mask = clip.frames[start : start + frames].copy(), clip.masks[:, start : start + frames].any(0)
        if p_canvas and rng.random() < p_canvas:
            video[0], mask[0] = reference_canvas([int(i) for i in ids], int(rng.integers(2**31)))
        clips.append(video)
        masks.append(mask)
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return (x, torch.from_numpy(np.stack(masks)).float()[:, None]) if with_masks else x


def reference_canvas(ids: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The identities' sprites composed on a white SIZE x SIZE canvas (official random placement
    for `seed`): (H, W, 3) uint8 and its (H, W) bool pixel mask."""
    from ..composition import RegionLayout, compose_references
    from .render import render_subject

    layout = RegionLayout.official_random(len(ids), SIZE, SIZE, seed)
    comp = compose_references([render_subject(identity(i), 96) for i in ids], SIZE, SIZE, layout=layout, spatial_stride=4)
    return np.asarray(comp.canvas), comp.pixel_mask.astype(bool)


def load_state(path: Path) -> dict:
    """weights_only loading, with numpy scalar types allowed: older checkpoints stored the LR
    schedule's numpy floats (data types, not code)."""
    allowed = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


# Stage 1 by VAE stride. 8: the recipe of the shipped miniature (single frames, then 9-frame
# clips, unweighted; stages 1b and 1c below mend what it loses). 4: what those stages taught, from
# the start: whole 13-frame clips (the fourth latent frame included), the loss weighted where the
# subjects are, the LR annealed at the end, and a quarter of the clips opening with their
# reference canvas (the condition MAGREF encodes, and the cut of a canvas-first target).
VAE_RECIPES = {
    8: dict(lr=1e-3, image_share=0.7, image_batch=16, clip_batch=4, clip_frames=9, subject_weight=1.0, p_canvas=0.0, anneal=None),
    4: dict(lr=1e-3, image_share=0.0, clip_batch=2, clip_frames=FRAMES, subject_weight=5.0, p_canvas=0.25, anneal=0.4),
}
CEILING_EVERY, CEILING_CLIPS = 500, 48  # stride-4 stage 1 measures its identity ceiling this often (steps), on this many clips


def _vae_lr_factor(recipe: dict, steps: int):
    if recipe["anneal"] is None:  # the shipped recipe: a cosine to 5 % over all steps
        return lambda s: float(0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) * 0.95 + 0.05)
    return cosine_to_tenth(steps, int(recipe["anneal"] * steps))


def train_vae(out: Path, steps: int, log=print, vae_stride: int = 8, device: str | torch.device = "cpu", init: str | Path | None = None) -> Path:
    """Stage 1 (`VAE_RECIPES`), resumable from its state; `init`: a VAE folder of this stride whose
    weights start a new run (a fresh optimizer and schedule), e.g. the 4x VAE shipped in assets."""
    recipe = VAE_RECIPES[vae_stride]
    vae_dir = out / "vae"
    state_file = vae_dir / "state.pt"
    device = torch.device(device)
    vae = miniature_vae(vae_stride)
    if init is not None and not state_file.is_file():
        from diffusers import AutoencoderKLWan

        from ..errors import MagrefInputError

        start = AutoencoderKLWan.from_pretrained(str(Path(init).expanduser()), torch_dtype=torch.float32)
        try:
            vae.load_state_dict(start.state_dict())
        except RuntimeError:
            raise MagrefInputError(f"{init} is not a VAE of spatial stride {vae_stride}.", "pass a VAE folder of the run's --vae-stride.") from None
        log(f"vae: starting from {init}")
    vae = vae.to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _vae_lr_factor(recipe, steps))
    step = 0
    if state_file.is_file():
        state = load_state(state_file)
        from ..errors import MagrefInputError

        saved = state.get("vae_stride")  # states from before it was recorded: the weights' shapes tell
        try:
            if saved is not None and int(saved) != vae_stride:
                raise RuntimeError
            vae.load_state_dict(state["vae"])
        except RuntimeError:
            raise MagrefInputError(f"{state_file} is a VAE of another spatial stride than {vae_stride}.",
                                   "resume with the --vae-stride it was started with, or use another --out.") from None
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        log(f"vae: resumed at step {step}")
    vae_dir.mkdir(parents=True, exist_ok=True)
    identifier = None
    if recipe["subject_weight"] != 1:
        from .identify import load_identifier

        identifier = load_identifier()  # a proxy until an identifier is trained through this VAE
    t0 = time.time()
    while step < steps:
        rng = np.random.default_rng([1, step])
        image_phase = step < int(recipe["image_share"] * steps)
        if image_phase:
            x, masks = world_frames(rng, recipe["image_batch"], 1), None
        else:
            x, masks = world_frames(rng, recipe["clip_batch"], recipe["clip_frames"], with_masks=True, p_canvas=recipe["p_canvas"])
        x = x.to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=torch.Generator(device).manual_seed(step))).sample
        weight = None if recipe["subject_weight"] == 1 or masks is None else 1 + (recipe["subject_weight"] - 1) * masks.to(device)
        loss = reconstruction_loss(rec, x, weight) + 1e-6 * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == steps:
            row = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "seconds": time.time() - t0}
            if identifier is not None and (step % CEILING_EVERY == 0 or step == steps):
                row["ceiling"] = _probe_ceiling(vae, identifier)
            with open(vae_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log(f"vae step {step}/{steps} loss {loss.item():.4f}" + (f" ceiling {row['ceiling']}" if "ceiling" in row else ""))
        if step % 100 == 0 or step == steps:
            tmp = state_file.with_suffix(".part")
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step, "vae_stride": vae_stride}, tmp)
            tmp.replace(state_file)
    vae.cpu()
    measure_latent_stats(vae)
    vae.save_pretrained(vae_dir / "model")
    log(f"vae: saved {vae_dir / 'model'} (latent std {np.mean(vae.config.latents_std):.3f})")
    return vae_dir / "model"


def _probe_ceiling(vae, identifier, clips: int | None = None) -> dict:
    """Identity top-1 of held-out clips decoded by `vae`, by subject count (a training-time probe)."""
    from .identify import ceiling

    was_training, device = vae.training, next(vae.parameters()).device
    vae.eval().cpu()
    try:
        return {k.replace("decoded top-1", "top-1"): round(v, 3) for k, v in ceiling(identifier, vae, clips or CEILING_CLIPS, by_count=True).items()
                if k.startswith("decoded")}
    finally:
        vae.to(device).train(was_training)


# The VAE stages after stage 1, in order; each starts from the previous folder.
# - tuned (1b): the decoder alone (encoder frozen) on whole 13-frame clips. Stage 1 trains on
#   single frames and 9-frame clips, and its decoder lost subjects in the fourth latent frame.
# - subjects (1c): the whole VAE on 13-frame clips, the reconstruction loss weighted 10x where
#   subjects are, then the latent statistics measured again. After 1b the whole-frame L1 was
#   0.08-0.11 per frame but 0.22 on the subjects of frame 0 and 0.45 on those of frames 9-12: the
#   subjects faded in every decoded video, true latents included, and the background hid it.
#   Tuning the decoder alone with that weighting left them at 0.3-0.38 (the encoder had lost them).
#   At a constant LR the identity of its decoded subjects (experiments/vae_subject_check.py) rose to
#   ~0.4 top-1 and stalled; annealing the LR over the last 850 steps lifted it to 0.55: the
#   constant-LR weights were noisy, not out of capacity.
# `anneal`: the last steps over which the LR falls by a cosine to a tenth (None: all of them).
VAE_STAGES = {
    "tuned": dict(src="model", seed=3, lr=3e-4, anneal=None, subject_weight=1.0, encoder=False),
    "subjects": dict(src="tuned", seed=6, lr=5e-4, anneal=850, subject_weight=10.0, encoder=True),
}


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + L2 / 2, each averaged with a per-pixel weight (B, 1, F, H, W) shared by the channels."""
    if weight is None:
        return (rec - x).abs().mean() + 0.5 * (rec - x).pow(2).mean()
    from ..training.flow import weighted_mean

    return weighted_mean((rec - x).abs(), weight) + 0.5 * weighted_mean((rec - x) ** 2, weight)


def cosine_to_tenth(steps: int, anneal: int | None = None):
    """LR factor per step: 1, then over the last `anneal` of `steps` (all of them if None) a
    cosine down to 0.1, then 0.1."""
    anneal = steps if anneal is None else min(anneal, steps)
    start = steps - anneal
    return lambda s: 1.0 if s < start or not anneal else float(0.5 * (1 + np.cos(np.pi * min(s - start, anneal) / anneal)) * 0.9 + 0.1)


def stage_loss(vae, cfg: dict, x: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss of a `VAE_STAGES` stage on clips x with subject masks: reconstruction of a
    sampled latent (weighted inside the subjects when the stage says so), plus a small KL term
    when the encoder trains (else the encoder runs without gradients)."""
    with torch.no_grad() if not cfg["encoder"] else nullcontext():
        post = vae.encode(x).latent_dist
        z = post.sample(generator=generator)
    weight = 1 + (cfg["subject_weight"] - 1) * masks if cfg["subject_weight"] != 1 else None
    loss = reconstruction_loss(vae.decode(z).sample, x, weight)
    return loss + 1e-6 * post.kl().mean() if cfg["encoder"] else loss


def measure_latent_stats(vae) -> None:
    """Per-channel latent mean and std over world clips, stored in the VAE's config, so the
    transformer sees unit-variance latents."""
    with torch.no_grad():
        rng = np.random.default_rng([2, 0])
        mus = torch.cat([vae.encode(world_frames(rng, 8, FRAMES)).latent_dist.mode() for _ in range(8)])
    vae.register_to_config(latents_mean=mus.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=mus.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist())


def tune_vae(out: Path, steps: int, log=print, stage: str = "tuned") -> Path:
    """A stage of `VAE_STAGES` on whole clips: the decoder (and post-quant conv) alone, or the
    whole VAE followed by new latent statistics."""
    from diffusers import AutoencoderKLWan

    cfg = VAE_STAGES[stage]
    src, dst, state_file = out / "vae" / cfg["src"], out / "vae" / stage, out / "vae" / f"{stage}_state.pt"
    if stage == "tuned" and (out / "vae" / "decoder_state.pt").is_file():  # the name before there were two stages
        state_file = out / "vae" / "decoder_state.pt"
    vae = AutoencoderKLWan.from_pretrained(src)
    if cfg["encoder"]:
        params = list(vae.parameters())
    else:
        vae.requires_grad_(False)
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_to_tenth(steps, cfg["anneal"]))
    step = 0
    if state_file.is_file():
        state = load_state(state_file)
        if "vae" in state:
            vae.load_state_dict(state["vae"])
        else:
            vae.decoder.load_state_dict(state["decoder"])
            vae.post_quant_conv.load_state_dict(state["post_quant_conv"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        log(f"vae ({stage}): resumed at step {step}")
    t0 = time.time()
    while step < steps:
        x, masks = world_frames(np.random.default_rng([cfg["seed"], step]), 2, FRAMES, with_masks=True)
        loss = stage_loss(vae, cfg, x, masks, torch.Generator().manual_seed(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 25 == 0 or step == steps:
            with open(out / "vae" / f"{stage}_metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), "seconds": time.time() - t0}) + "\n")
            log(f"vae ({stage}) step {step}/{steps} loss {loss.item():.4f}")
        if step % 50 == 0 or step == steps:
            tmp = state_file.with_suffix(".part")
            if cfg["encoder"]:
                weights = {"vae": vae.state_dict()}
            else:
                weights = {"decoder": vae.decoder.state_dict(), "post_quant_conv": vae.post_quant_conv.state_dict()}
            torch.save({**weights, "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step}, tmp)
            tmp.replace(state_file)
    if cfg["encoder"]:
        measure_latent_stats(vae)
    shutil.rmtree(dst, ignore_errors=True)
    vae.save_pretrained(dst)
    log(f"vae ({stage}): saved {dst}")
    return dst


# The training captions name the subject's kind and motion, not its colours: with colours in the
# caption (the second and third recipes) the model took the appearance from the text and the
# subject's place from the canvas (a recoloured canvas cost it nothing, experiments/conditioning_check.py).
# MAGREF's use is the same split: the prompt says what happens, the references say who.
CAPTIONS = "kind"

# Subjects per training clip. single: the paper's setting, what it claims composes at test time;
# multi: beyond the paper, clips of 1-3 subjects, each cut out of its clip and laid out by the same
# dynamic masking.
RECIPES = {"single": 1, "multi": (1, 2, 3)}


def _json_subjects(subjects):
    return subjects if isinstance(subjects, int) else list(subjects)


def run_vae(out: Path) -> Path:
    """The run's VAE: the last stage of `VAE_STAGES` that has finished (stage 1 if none)."""
    for stage in reversed(VAE_STAGES):
        if (out / "vae" / stage / "config.json").is_file():
            return out / "vae" / stage
    return out / "vae" / "model"


def run(out: str | Path, vae_steps: int = MINIATURE_BUDGET["vae_steps"], clips: int = MINIATURE_BUDGET["clips"],
        dit_steps: int = MINIATURE_BUDGET["dit_steps"], batch_size: int = MINIATURE_BUDGET["batch_size"], log=print,
        ablation: str = "none", reuse_from: str | Path | None = None, decoder_steps: int = MINIATURE_BUDGET["decoder_steps"],
        vae_from: str | Path | None = None, subject_vae_steps: int = MINIATURE_BUDGET["subject_vae_steps"],
        vae_stride: int = 8, device: str | None = None, stop_after_vae: bool = False, recipe: str = "single",
        vae_init: str | Path | None = None, size: int = SIZE, checkpoint_every: int = 100, stop_after_data: bool = False,
        transformer_init: str | Path | None = None, learning_rate: float = 1e-3, lr_schedule: str = "constant_with_warmup",
        dit_layers: int = 6, dit_heads: int = 4, encode_batch: int | None = None, source_order: float = 0.0, data_seed: int = 0,
        train_identities: int = TRAIN_IDENTITIES, repeats_by_references: list[int] | None = None,
        train_shift: float | None = None) -> Path:
    """`size`: the clips' height and width (64, the shipped miniature's; 128 gives the 8x VAE
    8x8 tokens per latent frame, room for several subjects); the VAE stages train at 64.
    `vae_stride`: 8 (the shipped miniature's geometry) or 4 (16x16 latents at 64x64; its stage 1
    is the whole recipe, the later VAE stages are the 8x recipe's repairs and are skipped).
    `recipe`: the training clips' subjects (`RECIPES`): "single", the paper's claim (single-subject
    clips only), or "multi", beyond the paper (1-3 subjects per clip, each cut out of it).
    `device`: where the VAE stages run (default: CUDA when there is one); the transformer stage
    picks CUDA by itself. `stop_after_vae`: return the VAE folder once the VAE stages are done.
    `stop_after_data`: return the transformer's training config once the clips are written, so
    its encoding cache can be built by many processes (`torchrun ... magref encode CONFIG`, one
    process spends most of a GPU run's minutes there); run again to train on it.
    `vae_from`: a finished VAE folder (e.g. the bundled `assets/models/miniature/vae`) that replaces
    stages 1, 1b and 1c, the serial part of a run (~2.5 h here). `checkpoint_every`: transformer
    steps between checkpoints (each is kept, ~140 MB: a fast GPU run wants fewer).
    `reuse_from`: another run's folder whose VAE and data to reuse, so an ablation differs
    from the full model only in the transformer's conditioning. `transformer_init`: weights that
    start the transformer instead of a random init (a model folder, e.g. `world export`'s, or a
    transformer .safetensors such as a lent GPU's packed run), with a fresh optimizer: a run
    can go on where a short GPU session stopped, on this run's own clips. `learning_rate`,
    `lr_schedule`: the transformer's (a diffusers schedule name; "cosine" anneals to 0 by
    `dit_steps`, e.g. to finish a started transformer). `dit_layers`, `dit_heads`: the
    transformer's size (width = heads x 64; the shipped miniature's 6 x 4, 7.0 M parameters).
    `encode_batch`: examples (clip x layout) per encoder call while the encoding cache is built
    (`cache_encode_batch`: 1 keeps it equal to the live path bit for bit; a GPU wants 16); None
    keeps what the run's config says (1 for a new run), so a resume without it reads its cache.
    `source_order`: the share of grid and random layouts whose regions keep the subjects'
    left-to-right order in the clip (`layout.p_source_order`; 0, the method's draw, shuffles it).
    `data_seed`: which training clips are drawn (clip k depends on (seed, k)): another seed gives
    as many new clips, of the same training identities, without re-encoding the old ones (the
    encoding cache is keyed by the whole clip list, so growing `clips` re-encodes them all).
    `train_identities`: how many training identities the clips draw from (320, the first 400 ids'
    split, up to `MAX_TRAIN_IDENTITIES`): more looks, so that fewer of a held-out subject's
    attributes come only as they were paired in training (recorded in the clips' manifest).
    `repeats_by_references`: how often an epoch shows a clip with 1, 2, 3 references (the
    trainer's `repeats_by_references`), e.g. [3, 1, 1] for more single-subject clips from the
    multi recipe's data without new clips to encode; [] every clip once; None the run's own on a
    resume, else every clip once. `train_shift`: the shift of the shifted-uniform noise levels the
    transformer trains at (sigma = s u / (1 + (s - 1) u); 3, the sampler's, by default; below 3
    more of the draws are at low noise); None the run's own on a resume."""
    from diffusers import AutoencoderKLWan

    from ..data.shards import ClipDataset
    from ..pipeline import MagrefPipeline
    from ..training.trainer import run as train_run

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    _check_clips(out, size, data_seed, reuse_from, train_identities)  # before anything is written: a refused run stays as it was
    _check_dit_size(out, dit_layers, dit_heads)
    repeats_by_references = _run_repeats(out, repeats_by_references, recipe)
    if train_shift is not None and not (math.isfinite(train_shift) and train_shift > 0):
        from ..errors import MagrefInputError

        raise MagrefInputError(f"--train-shift {train_shift}: the shift must be a positive, finite number.",
                               "pass e.g. 1 (uniform noise levels) or 3 (the default).")
    from ..training.config import TrainConfig

    train_shift = _run_setting(out, "shift", train_shift, TrainConfig.shift, "--train-shift", normalise=float)
    init = _check_transformer_init(out, transformer_init)
    if transformer_init is not None:  # before the VAE stages (hours from scratch): weights that cannot start this transformer
        with torch.device("meta"):
            fitted_init(miniature_transformer(ablation, _z_dim(out, vae_from, reuse_from), dit_layers, dit_heads), transformer_init)
    # from here on this process writes the run: a second `world train` into it (a resume started too soon) is refused
    with folder_lock(out, ".magref-train.lock", "magref world train",
                     "wait for that run to finish (or stop it), then run the same command again to resume; or use another --out."):
        # the requested start and the transformer's settings, kept until the base and dit.yaml record them:
        # a resume during the VAE and data stages need not repeat the options
        (out / "run.json").write_text(json.dumps({"size": size, "recipe": recipe, "ablation": ablation, "transformer_init": init,
                                                  "shift": train_shift, "repeats_by_references": repeats_by_references}, indent=2))
        if train_shift != TrainConfig.shift:  # an ablation that reuses this run's data does not inherit it: say which it trains at
            log(f"transformer: noise levels drawn at shift {train_shift} (--train-shift; the default {TrainConfig.shift:g})")
        timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}

        if reuse_from is not None:
            reuse_from = Path(reuse_from).expanduser()
            for part in ("vae", "data"):
                if not (out / part).exists():
                    (out / part).symlink_to((reuse_from / part).resolve(), target_is_directory=True)
        if vae_from is not None and not (out / "vae" / "model" / "config.json").is_file():
            vae = AutoencoderKLWan.from_pretrained(Path(vae_from).expanduser(), torch_dtype=torch.float32)
            for stage in ("model", *VAE_STAGES):  # a finished VAE: the tuning stages have nothing to do
                vae.save_pretrained(out / "vae" / stage)
            log(f"vae: from {vae_from}")
        from ..distributed import default_device

        device = device or default_device()
        try:
            torch.device(device)
        except RuntimeError:
            from ..errors import MagrefInputError

            raise MagrefInputError(f"Unknown device {device!r}.", "use --device cpu or --device cuda.") from None
        if (out / "vae" / "model" / "config.json").is_file():
            have = json.loads((out / "vae" / "model" / "config.json").read_text()).get("scale_factor_spatial") or 8
            if vae_from is None and have != vae_stride:
                from ..errors import MagrefInputError

                raise MagrefInputError(f"{out} holds a VAE of spatial stride {have}, not {vae_stride}.", f"pass --vae-stride {have}, or use another --out.")
            vae_stride = have  # a --vae folder brings its own stride
        if not (out / "vae" / "model" / "config.json").is_file():
            t = time.time()
            train_vae(out, vae_steps, log, vae_stride, device, init=vae_init)
            timings["vae_s"] = timings.get("vae_s", 0) + time.time() - t
        if vae_stride != 8:
            decoder_steps = subject_vae_steps = 0
        for stage, budget in zip(VAE_STAGES, (decoder_steps, subject_vae_steps)):
            if budget and reuse_from is None and not (out / "vae" / stage / "config.json").is_file():  # reused: the source run tunes it
                if VAE_STAGES[stage]["src"] != "model" and not (out / "vae" / VAE_STAGES[stage]["src"] / "config.json").is_file():
                    continue  # its source stage was skipped
                t = time.time()
                tune_vae(out, budget, log, stage)
                timings[f"vae_{stage}_s"] = timings.get(f"vae_{stage}_s", 0) + time.time() - t
        (out / "timings.json").write_text(json.dumps(timings, indent=2))
        if stop_after_vae:
            return run_vae(out)
        if not (out / "base" / "model_index.json").is_file() or init != _base_init(out):
            vae = AutoencoderKLWan.from_pretrained(run_vae(out))
            comps = miniature_components(ablation=ablation, vae_stride=vae.config.scale_factor_spatial, z_dim=vae.config.z_dim, layers=dit_layers,
                                         heads=dit_heads)
            if init is not None:
                load_transformer_init(comps["transformer"], init["path"])
            comps["vae"] = vae
            tmp = out / "base.tmp"  # the base and the record of its start appear together
            shutil.rmtree(tmp, ignore_errors=True)
            MagrefPipeline(**comps).save_pretrained(tmp)
            (tmp / "init.json").write_text(json.dumps({"transformer_init": init}))
            shutil.rmtree(out / "base", ignore_errors=True)
            tmp.rename(out / "base")
            log(f"transformer: starts from {init['path']}" if init else "transformer: random init")
        if (out / "data" / "manifest.json").is_file() and not (out / "data").is_symlink():
            stale, data = [], ClipDataset(out / "data")
            if data.masks(0) is None:
                stale.append("without per-frame subject masks")
            if data.manifest["world"].get("captions", "appearance") != CAPTIONS:
                stale.append("with captions that name colours")
            if data.manifest["world"].get("subjects") != _json_subjects(RECIPES[recipe]):
                from ..errors import MagrefInputError

                raise MagrefInputError(f"{out / 'data'} holds clips with {data.manifest['world'].get('subjects')} subject(s), not those of recipe {recipe!r}.",
                                       "use another --out for another recipe (an ablation shares its recipe's data through --reuse-from).")
            if stale:  # same clips and keys: the encoding cache (canvas, target, CLIP; not the captions) stays valid
                log(f"data: written {' and '.join(stale)}; rebuilding the shards, keeping the encoding cache")
                (out / "data" / "manifest.json").unlink()
        if not (out / "data" / "manifest.json").is_file():
            t = time.time()
            if (out / "data" / "encodings").is_dir():  # same clips, same keys: keep the encoders' work
                for shard in (out / "data").glob("shard-*.tar"):
                    shard.unlink()
            else:
                shutil.rmtree(out / "data", ignore_errors=True)
            # cut-outs from frame 0, the target's first frame: their boxes are where the subject starts
            build_world_dataset(out / "data", clips, "train", seed=data_seed, frames=FRAMES, height=size, width=size, subjects=RECIPES[recipe],
                                identities=train_identities, samples_per_shard=500, log=log, cutout_frame=0, caption_style=CAPTIONS,
                                workers=max(1, min(len(os.sched_getaffinity(0)), clips // 250, 16)))
            timings["data_s"] = time.time() - t
        (out / "timings.json").write_text(json.dumps(timings, indent=2))

        config = out / "dit.yaml"
        import yaml

        if encode_batch is None:  # the run's own setting, else that of the run whose cache it reads
            source = config if config.is_file() else Path(reuse_from).expanduser() / "dit.yaml" if reuse_from else None
            encode_batch = (yaml.safe_load(source.read_text()) or {}).get("cache_encode_batch", 1) if source and source.is_file() else 1

        config.write_text(yaml.safe_dump({
            "model": str(out / "base"), "data": str(out / "data"), "output_dir": str(out / "dit"), "seed": 0,
            "max_steps": dit_steps, "batch_size": batch_size, "learning_rate": learning_rate, "lr_scheduler": lr_schedule,
            "warmup_steps": 100, "ema_decay": 0.999,
            # the frozen encoders' work, done once for all runs that share the data: ~4x faster steps
            "cache_layouts": 2, "cache_encode_batch": encode_batch,
            "mode": "full", "sigma_sampling": "shifted_uniform", "shift": train_shift, "checkpoint_every": checkpoint_every,
            # The target's frame 0 stays the clip's own. MAGREF puts the canvas there; this VAE, trained
            # on continuous clips only, cannot code that cut (L1 0.31 against 0.08, the scene after it
            # garbled, and tuning the decoder does not recover it: the encoder has lost it), so
            # transformers trained on such targets learn undecodable latents. The canvas still reaches
            # the model through the condition channels (or tokens), which is what the method is about.
            "log_every": 10, "caption_dropout": 0.1, "first_frame": "clip",
            # Half the layouts put the reference where the subject starts in the clip: a model trained
            # from scratch on random layouts alone ignored the canvas (its removal cost < 0.01 flow MSE
            # at 1600 steps), because copying a subject to another place needs a correspondence it
            # has no reason to learn before it copies in place. The other half are the method's.
            "layout": {"p_official_grid": 0.3, "p_drop": 0.0, "min_scale": 0.6, "p_source_boxes": 0.5, "p_source_order": source_order},
            # The subject covers a tenth of a frame, so the plain loss is mostly background, which the
            # caption alone predicts; the world knows where subjects are, so their cells count 5x.
            "subject_loss_weight": 5.0,
            **({"repeats_by_references": repeats_by_references} if repeats_by_references else {}),
        }))
        if stop_after_data:
            log(f"world train: clips and config written; encode ahead with `magref encode {config}`, then run again to train")
            return config
        t = time.time()
        from ..training.checkpointing import latest_checkpoint

        train_run(str(config), resume=latest_checkpoint(out / "dit") is not None)  # a first save cut short is no start
        timings["dit_s"] = timings.get("dit_s", 0) + time.time() - t
        timings["total_s_this_run"] = time.time() - t_start
        (out / "timings.json").write_text(json.dumps(timings, indent=2))
        log(f"world train: done; pipeline at {out / 'dit' / 'final'}")
        return out / "dit" / "final"


def _run_repeats(out: Path, repeats: list[int] | None, recipe: str) -> list[int]:
    """The run's `repeats_by_references`, checked before anything is written (see `_run_setting`);
    the recipe checks hold for a value a resume inherits as for a given one."""
    from ..errors import MagrefInputError
    from ..training.checkpointing import latest_checkpoint
    from ..training.config import check_repeats_by_references, normalised_repeats

    if repeats is not None:
        check_repeats_by_references(list(repeats), "--repeats-by-references")
    inherited = repeats is None
    repeats = _run_setting(out, "repeats_by_references", repeats, [], "--repeats-by-references",
                           show=lambda r: " ".join(map(str, r)) or "(every clip once)", normalise=normalised_repeats)
    counts = [RECIPES[recipe]] if isinstance(RECIPES[recipe], int) else list(RECIPES[recipe])
    given = " ".join(map(str, repeats)) + (f" (the run's own, asked for earlier in {out})" if inherited else "")
    if repeats and not any(repeats[k - 1] if k <= len(repeats) else 1 for k in counts):
        problem = f"--repeats-by-references {given} leaves out every clip of recipe {recipe!r} (clips with {counts} reference(s))."
        fix = "give one of those counts a repeat of 1 or more."
    elif repeats and len(counts) == 1:
        problem = f"--repeats-by-references {given} weights nothing in recipe {recipe!r}: every clip has {counts[0]} reference(s)."
        fix = "use it with --recipe multi, or leave it out."
    else:
        return repeats
    if inherited:  # the repeats are the run's own: the recipe is what changed
        asked = (json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}).get("recipe")
        was = f" --recipe {asked} (what {out} was asked for)" if asked and asked != recipe else " the recipe it was asked for"
        fix = (f"resume with{was}, or use another --out." if latest_checkpoint(out / "dit") is not None
               else f"pass{was}, or --repeats-by-references 1 to train recipe {recipe!r} with every clip once.")
    raise MagrefInputError(problem, fix)


def _run_setting(out: Path, key: str, given, default, option: str, show=str, normalise=lambda v: v):
    """A transformer setting a resume keeps: None reads the run's own, so a resume need not repeat
    the option: once the transformer has trained, what its dit.yaml gave the trainer; before, what
    the last request asked for (run.json, written before the VAE and data stages; dit.yaml for
    runs from before it recorded settings); else `default`. A value other than the one a started
    transformer trained with is refused here, before any stage runs, rather than by the trainer's
    fingerprint after the data stages."""
    import yaml

    from ..errors import MagrefInputError
    from ..training.checkpointing import latest_checkpoint

    started = latest_checkpoint(out / "dit") is not None
    sources = [(out / "run.json", json.loads), (out / "dit.yaml", yaml.safe_load)]
    had = default
    for path, load in sources if started else sources[::-1]:  # the later one wins
        recorded = (load(path.read_text()) or {}) if path.is_file() else {}
        if recorded.get(key) is not None:
            had = recorded[key]
    had = normalise(had)
    if given is None:
        return had
    given = normalise(given)
    if given != had and started:
        raise MagrefInputError(f"{out}: its transformer trained with {option} {show(had)}, not {show(given)}.",
                               f"resume without {option} (the run's own: {show(had)}), or train {option} {show(given)} in another --out.")
    return given


def _z_dim(out: Path, vae_from, reuse_from) -> int:
    """The latent width the run's VAE will have, from the first VAE `run` uses: the run's own
    (a resume), the reused run's, the given one (`--vae`), else a new one's (16)."""
    for folder in (out / "vae" / "model", reuse_from and Path(reuse_from).expanduser() / "vae" / "model", vae_from):
        if folder and (Path(folder).expanduser() / "config.json").is_file():
            return json.loads((Path(folder).expanduser() / "config.json").read_text()).get("z_dim", 16)
    return 16


def _check_dit_size(out: Path, layers: int, heads: int) -> None:
    """A positive size, and a run's transformer keeps the size it was built with."""
    from ..errors import MagrefInputError

    if layers < 1 or heads < 1:
        raise MagrefInputError(f"--dit-layers {layers} --dit-heads {heads}: a transformer needs at least one of each.",
                               "pass positive numbers (the shipped miniature: --dit-layers 6 --dit-heads 4).")
    config = out / "base" / "transformer" / "config.json"
    if config.is_file():
        have = json.loads(config.read_text())
        if (have["num_layers"], have["num_attention_heads"]) != (layers, heads):
            raise MagrefInputError(f"{out}'s transformer has {have['num_layers']} layers and {have['num_attention_heads']} heads, not {layers} and {heads}.",
                                   f"pass --dit-layers {have['num_layers']} --dit-heads {have['num_attention_heads']}, or use another --out.")


def _transformer_weights(init: str | Path) -> Path:
    """The transformer .safetensors of `init`: the file itself, or a model folder's transformer."""
    path = Path(init).expanduser()
    for candidate in (path, path / "transformer" / "diffusion_pytorch_model.safetensors", path / "diffusion_pytorch_model.safetensors"):
        if candidate.is_file():
            return candidate.resolve()
    from ..errors import MagrefInputError

    raise MagrefInputError(f"--transformer-init {init}: no transformer weights there.",
                           "pass a .safetensors of transformer weights or a model folder with transformer/diffusion_pytorch_model.safetensors.")


def _base_init(out: Path) -> dict | None:
    """What the run's base transformer started from, {path, sha256} (None: a random init, also
    for runs from before init.json)."""
    f = out / "base" / "init.json"
    init = json.loads(f.read_text())["transformer_init"] if f.is_file() else None
    return {"path": init, "sha256": None} if isinstance(init, str) else init  # recorded by path alone (first version)


def _check_transformer_init(out: Path, transformer_init: str | Path | None) -> dict | None:
    """The run's transformer start as recorded, {path, sha256}: the requested weights, or, when
    none is requested, what the run already started from (a resume need not repeat the option).
    Weights are told apart by content, so a file overwritten in place is a new start. A run whose
    transformer has trained from one start refuses another."""
    if transformer_init is None:
        if (out / "base" / "model_index.json").is_file():
            return _base_init(out)
        run_json = out / "run.json"  # stopped before its base was built: the start it was given
        return json.loads(run_json.read_text()).get("transformer_init") if run_json.is_file() else None
    from ..io import sha256_file
    from ..training.checkpointing import latest_checkpoint

    path = _transformer_weights(transformer_init)
    init = {"path": str(path), "sha256": sha256_file(path)}
    have = _base_init(out)
    if latest_checkpoint(out / "dit") is not None and (have or {}).get("sha256") != init["sha256"]:
        from ..errors import MagrefInputError

        raise MagrefInputError(f"{out} has trained its transformer from {have['path'] if have else 'a random init'}, not from {path}.",
                               "resume without --transformer-init, or use another --out.")
    return have if have and have["sha256"] == init["sha256"] else init  # the same weights, wherever they are now


# the residual branches of a Wan block: zeroed, the block passes its input through unchanged
_BRANCH_OUTPUTS = ("attn1.to_out.0.", "attn2.to_out.0.", "ffn.net.2.")


def _block_count(state: dict) -> int:
    return 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)


def grow_blocks(state: dict, layers: int) -> dict:
    """`state` (a transformer's weights) with `layers` blocks instead of its own, by function-preserving
    depth growth: new block i copies old block i * old // layers, and every copy after the first has
    its branch outputs zeroed, so the deeper transformer computes what the shallower one did and
    training starts from it (no library grows a diffusers transformer; this is a few renames)."""
    old = _block_count(state)
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for i in range(layers):
        j = i * old // layers
        first = i == 0 or (i - 1) * old // layers != j
        for k, v in state.items():
            if k.startswith(f"blocks.{j}."):
                rest = k[len(f"blocks.{j}."):]
                out[f"blocks.{i}.{rest}"] = v if first or not rest.startswith(_BRANCH_OUTPUTS) else torch.zeros_like(v)
    return out


def fitted_init(transformer, init: str | Path) -> dict:
    """The weights at `init` as `transformer` takes them (grown when they have fewer blocks of the
    same width: `grow_blocks`); weights that do not fit are refused. `transformer` may live on the
    meta device: only its names and shapes are read."""
    from safetensors.torch import load_file

    from ..errors import MagrefInputError

    state = load_file(str(_transformer_weights(init)))
    if 0 < _block_count(state) < len(transformer.blocks):
        state = grow_blocks(state, len(transformer.blocks))
    own = transformer.state_dict()
    wrong = sorted(set(own) ^ set(state)) + sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if wrong:
        raise MagrefInputError(f"--transformer-init {init}: its weights do not fit this run's transformer ({len(wrong)} names or shapes differ, "
                               f"e.g. {wrong[0]}).", "pass weights of a run with the same width and conditioning (channels or tokens), "
                               "and as many blocks or fewer (--dit-layers).")
    return state


def load_transformer_init(transformer, init: str | Path) -> None:
    """Load the weights at `init` into `transformer` (float32), refusing any that do not fit; weights
    of a transformer with fewer blocks but the same width start a deeper one (`grow_blocks`)."""
    transformer.load_state_dict({k: v.float() for k, v in fitted_init(transformer, init).items()})


def _check_clips(out: Path, size: int, data_seed: int, reuse_from: str | Path | None, train_identities: int = TRAIN_IDENTITIES) -> None:
    """The run's frame size agrees with what it already holds (its run.json, its clips) and with
    the run it reuses (runs from before run.json were 64 px); the clips it trains on, its own or
    those it reuses, are of its data seed and identities, not clips it was not asked for."""
    from ..errors import MagrefInputError

    identity_ids("train", train_identities)  # a count out of range is refused first

    def manifest(data: Path) -> dict | None:
        return json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").is_file() else None

    have, own = {}, manifest(out / "data")
    if (out / "run.json").is_file():
        have[f"{out} is a run"] = run_size(out)
    if own is not None:
        have[f"{out / 'data'} holds clips"] = own["settings"]["height"]
    if reuse_from is not None:
        have[f"--reuse-from {reuse_from} is a run"] = run_size(reuse_from)
    for what, px in have.items():
        if px != size:
            raise MagrefInputError(f"{what} at {px} px, not {size}.", f"pass --size {px}, or use another --out.")
    data = out / "data" if (out / "data").exists() or reuse_from is None else Path(reuse_from).expanduser() / "data"
    clips = own if data == out / "data" else manifest(data)
    seed = data_seed if clips is None else clips["world"].get("seed", 0)
    if seed != data_seed:
        raise MagrefInputError(f"{data} holds clips of data seed {seed}, not {data_seed}.",
                               f"pass --data-seed {seed} to go on with them, or use another --out for new clips.")
    drawn = train_identities if clips is None else clips["world"].get("identities", TRAIN_IDENTITIES)
    if drawn != train_identities:
        raise MagrefInputError(f"{data} holds clips of {drawn} training identities, not {train_identities}.",
                               f"pass --train-identities {drawn} to go on with them, or use another --out for new clips.")


def pipeline_from_run(run: str | Path, step: int | None = None):
    """The MagrefPipeline of a `magref world train` run at a transformer checkpoint (the latest
    one when `step` is None): the run's base pipeline with the checkpoint's weights. Comparing
    runs at one step compares them at the same training budget."""
    from safetensors.torch import load_file

    from ..errors import MagrefInputError
    from ..pipeline import MagrefPipeline

    run = Path(run).expanduser()
    saved = sorted(p for p in (run / "dit" / "checkpoints").glob("step-*") if not p.name.endswith(".part"))  # a save in progress is no checkpoint
    ckpts = [p for p in saved if (p / "trainable.safetensors").is_file() or (p / "ema.safetensors").is_file()]  # a GPU run's packed weights are EMA only
    if step is not None:
        ckpts = [p for p in ckpts if int(p.name.split("-")[1]) == step]
    if not (run / "base" / "model_index.json").is_file() or not ckpts:
        have = ", ".join(str(int(p.name.split("-")[1])) for p in saved) or "none"
        raise MagrefInputError(f"{run} has no base pipeline or no transformer checkpoint at step {step} (have: {have}).",
                               "pass a `magref world train --out` folder and one of its checkpoint steps.")
    pipe = MagrefPipeline.from_pretrained(str(run / "base"))
    ema = ckpts[-1] / "ema.safetensors"  # the averaged weights sample better where the run kept them
    pipe.transformer.load_state_dict(load_file(ema if ema.is_file() else ckpts[-1] / "trainable.safetensors"))
    from diffusers import AutoencoderKLWan

    pipe.vae = AutoencoderKLWan.from_pretrained(run_vae(run))  # base may predate stage 1b; the encoder is the same
    return pipe


def export_run(run: str | Path, dest: str | Path, step: int | None = None, dtype=torch.bfloat16, guidance: float | None = None) -> Path:
    """Save a run's pipeline (at `step`) as a self-contained folder, weights in `dtype` (bf16
    halves the size of the bundled model; `models.load_pipeline` computes in float32), with
    the generation settings the model was trained for. `guidance`: its default guidance scale, when
    measured to suit it better than the official 5 (chosen on one case seed, confirmed on another)."""
    from ..io import write_json

    if guidance is not None:  # a request's rule, so every default is one a request accepts; refused before `dest` is cleared
        from ..request import check_guidance

        check_guidance(guidance)
    pipe = pipeline_from_run(run, step)
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        _to_storage_dtype(getattr(pipe, name), dtype)
    pipe.save_pretrained(dest)
    _drop_source_paths(dest)
    defaults = MINIATURE_DEFAULTS | dict(height=run_size(run), width=run_size(run))
    write_json(dest / "generation_defaults.json", defaults if guidance is None else defaults | dict(guidance=float(guidance)))
    return dest


def run_size(run: str | Path) -> int:
    """The frame size a `world train` run trained at (runs from before `--size`: 64)."""
    path = Path(run).expanduser() / "run.json"
    return int(json.loads(path.read_text()).get("size", SIZE)) if path.is_file() else SIZE


def export_vae(run: str | Path, dest: str | Path, dtype=torch.bfloat16) -> Path:
    """A run's finished VAE alone (as `export_run` stores it), for `magref world train --vae`."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(run_vae(Path(run).expanduser()))
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    _to_storage_dtype(vae, dtype).save_pretrained(dest)
    _drop_source_paths(dest)
    return dest


def _drop_source_paths(folder: Path) -> None:
    """diffusers records where each config was loaded from (`_name_or_path`): on an export that is
    a run folder of the machine that trained it, not part of the model."""
    from ..io import write_json

    for path in folder.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            write_json(path, config)


def _to_storage_dtype(model, dtype):
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())  # norms, rope, time embedding stay exact
    for param_name, p in model.named_parameters():
        if not any(k in param_name.split(".") for k in keep):
            p.data = p.data.to(dtype)
    return model


# What the miniature model was trained for: 64x64 clips of 13 frames (9 shown); captions without
# a negative prompt (caption dropout trains the empty prompt as the unconditional branch).
MINIATURE_DEFAULTS = dict(height=SIZE, width=SIZE, frames=FRAMES, steps=25, guidance=5.0, shift=3.0, fps=8.0, negative_prompt="")


if __name__ == "__main__":  # pragma: no cover
    run(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/magref/world")
