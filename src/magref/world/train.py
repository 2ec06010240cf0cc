"""`magref world train`: the miniature MAGREF, from scratch, on the procedural world.

Stages (each resumable; everything lives under --out, by default ~/.cache/magref/world):
1. vae      a small Wan VAE (base width 16, 16 latent channels) learns to reconstruct world
            frames: single frames first (the causal VAE codes frame 0 alone), then clips;
            per-channel latent mean/std are measured afterwards and stored in its config.
1b. decoder the decoder alone on whole 13-frame clips (encoder frozen: the latent space is fixed).
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
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..defaults import MINIATURE_BUDGET
from .build import build_world_dataset, identity_ids
from .clips import make_clip
from .render import identity

FRAMES, SIZE = 13, 64


ABLATIONS = {
    "none": dict(conditioning="channel", mask_channels=True),  # MAGREF
    "no-mask": dict(conditioning="channel", mask_channels=False),  # mask channels carry zeros
    "tokens": dict(conditioning="tokens", mask_channels=True),  # references as extra tokens (Phantom-style)
}


def miniature_components(seed: int = 0, ablation: str = "none") -> dict:
    """Same family as the real model, sized for a 2-core CPU."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from ..schedulers import make_scheduler
    from ..tiny import byte_tokenizer
    from ..checkpoints import clip_image_processor

    tokenizer = byte_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                                         image_size=56, patch_size=14, projection_dim=32, hidden_act="gelu"))
        vae = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True])
        in_channels = 16 if ABLATIONS[ablation]["conditioning"] == "tokens" else 36
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=in_channels, out_channels=16,
                                            text_dim=64, freq_dim=64, ffn_dim=768, num_layers=6, cross_attn_norm=True,
                                            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=64, added_kv_proj_dim=256, rope_max_seq_len=256)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, scheduler=make_scheduler("unipc", 3.0),
                image_encoder=image_encoder.eval(), transformer=transformer, image_processor=clip_image_processor(56),
                text_len=226, **ABLATIONS[ablation])  # captions are < 226 bytes; shorter padding, cheaper cross-attention


def world_frames(rng: np.random.Generator, batch: int, frames: int) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1]: random training-identity clips (1-3 subjects)."""
    pool = identity_ids("train")
    clips = []
    for _ in range(batch):
        n = int(rng.integers(1, 4))
        ids = rng.choice(pool, size=n, replace=False)
        clip = make_clip([identity(int(i)) for i in ids], rng, frames=max(frames, 2), height=SIZE, width=SIZE)
        start = int(rng.integers(0, clip.frames.shape[0] - frames + 1))
        clips.append(clip.frames[start : start + frames])
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1


def load_state(path: Path) -> dict:
    """weights_only loading, with numpy scalar types allowed: older checkpoints stored the LR
    schedule's numpy floats (data types, not code)."""
    allowed = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


def train_vae(out: Path, steps: int, log=print) -> Path:

    vae_dir = out / "vae"
    state_file = vae_dir / "state.pt"
    vae = miniature_components()["vae"]
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) * 0.95 + 0.05))
    step = 0
    if state_file.is_file():
        state = load_state(state_file)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        log(f"vae: resumed at step {step}")
    vae_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    while step < steps:
        rng = np.random.default_rng([1, step])
        image_phase = step < int(0.7 * steps)
        x = world_frames(rng, 16 if image_phase else 4, 1 if image_phase else 9)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=torch.Generator().manual_seed(step))).sample
        loss = (rec - x).abs().mean() + 0.5 * (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == steps:
            with open(vae_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), "seconds": time.time() - t0}) + "\n")
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
        if step % 200 == 0 or step == steps:
            tmp = state_file.with_suffix(".part")
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step}, tmp)
            tmp.replace(state_file)
    # latent statistics, so the transformer sees unit-variance latents
    with torch.no_grad():
        rng = np.random.default_rng([2, 0])
        mus = torch.cat([vae.encode(world_frames(rng, 8, FRAMES)).latent_dist.mode() for _ in range(8)])
    mean = mus.mean(dim=(0, 2, 3, 4)).tolist()
    std = mus.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(vae_dir / "model")
    log(f"vae: saved {vae_dir / 'model'} (latent std {np.mean(std):.3f})")
    return vae_dir / "model"


def tune_decoder(out: Path, steps: int, log=print) -> Path:
    """Stage 1b: the VAE's decoder alone, on whole 13-frame clips. Stage 1 trains on single frames
    and 9-frame clips, and its decoder loses subjects in the fourth latent frame (frames 9-12)
    that the transformer's clips have. The encoder is frozen, so the latent space the transformer
    learns in, and its statistics, stay exactly as they were: this stage may run before, during
    or after the transformer's training."""
    from diffusers import AutoencoderKLWan

    src, dst, state_file = out / "vae" / "model", out / "vae" / "tuned", out / "vae" / "decoder_state.pt"
    vae = AutoencoderKLWan.from_pretrained(src)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) * 0.9 + 0.1))
    step = 0
    if state_file.is_file():
        state = load_state(state_file)
        vae.decoder.load_state_dict(state["decoder"])
        vae.post_quant_conv.load_state_dict(state["post_quant_conv"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        log(f"decoder: resumed at step {step}")
    t0 = time.time()
    while step < steps:
        rng = np.random.default_rng([3, step])
        x = world_frames(rng, 2, FRAMES)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(step))
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + 0.5 * (rec - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 25 == 0 or step == steps:
            with open(out / "vae" / "decoder_metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), "seconds": time.time() - t0}) + "\n")
            log(f"decoder step {step}/{steps} loss {loss.item():.4f}")
        if step % 50 == 0 or step == steps:
            tmp = state_file.with_suffix(".part")
            torch.save({"decoder": vae.decoder.state_dict(), "post_quant_conv": vae.post_quant_conv.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step}, tmp)
            tmp.replace(state_file)
    shutil.rmtree(dst, ignore_errors=True)
    vae.save_pretrained(dst)
    log(f"decoder: saved {dst}")
    return dst


def run_vae(out: Path) -> Path:
    """The run's VAE: the decoder-tuned one once stage 1b has finished (same encoder)."""
    tuned = out / "vae" / "tuned"
    return tuned if (tuned / "config.json").is_file() else out / "vae" / "model"


def run(out: str | Path, vae_steps: int = MINIATURE_BUDGET["vae_steps"], clips: int = MINIATURE_BUDGET["clips"],
        dit_steps: int = MINIATURE_BUDGET["dit_steps"], batch_size: int = MINIATURE_BUDGET["batch_size"], log=print,
        ablation: str = "none", reuse_from: str | Path | None = None, decoder_steps: int = MINIATURE_BUDGET["decoder_steps"],
        vae_from: str | Path | None = None) -> Path:
    """`vae_from`: a finished VAE folder (e.g. the bundled `assets/world/vae`) that replaces
    stages 1 and 1b, which are the serial part of a run (~45 min here).
    `reuse_from`: another run's folder whose VAE and data to reuse, so an ablation differs
    from the full model only in the transformer's conditioning."""
    from diffusers import AutoencoderKLWan

    from ..data.shards import ClipDataset
    from ..pipeline import MagrefPipeline
    from ..training.trainer import run as train_run

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}

    if reuse_from is not None:
        reuse_from = Path(reuse_from).expanduser()
        for part in ("vae", "data"):
            if not (out / part).exists():
                (out / part).symlink_to((reuse_from / part).resolve(), target_is_directory=True)
    if vae_from is not None and not (out / "vae" / "model" / "config.json").is_file():
        vae = AutoencoderKLWan.from_pretrained(Path(vae_from).expanduser(), torch_dtype=torch.float32)
        for stage in ("model", "tuned"):  # already decoder-tuned: stage 1b has nothing to do
            vae.save_pretrained(out / "vae" / stage)
        log(f"vae: from {vae_from}")
    if not (out / "vae" / "model" / "config.json").is_file():
        t = time.time()
        train_vae(out, vae_steps, log)
        timings["vae_s"] = timings.get("vae_s", 0) + time.time() - t
    if decoder_steps and reuse_from is None and not (out / "vae" / "tuned" / "config.json").is_file():  # reused: the source run tunes it
        t = time.time()
        tune_decoder(out, decoder_steps, log)
        timings["decoder_s"] = timings.get("decoder_s", 0) + time.time() - t
    if not (out / "base" / "model_index.json").is_file():
        comps = miniature_components(ablation=ablation)
        comps["vae"] = AutoencoderKLWan.from_pretrained(run_vae(out))
        shutil.rmtree(out / "base", ignore_errors=True)
        MagrefPipeline(**comps).save_pretrained(out / "base")
    if (out / "data" / "manifest.json").is_file() and not (out / "data").is_symlink() and ClipDataset(out / "data").masks(0) is None:
        log("data: written before per-frame subject masks were stored; rebuilding the shards (same clips, so the encoding cache stays valid)")
        (out / "data" / "manifest.json").unlink()
    if not (out / "data" / "manifest.json").is_file():
        t = time.time()
        if (out / "data" / "encodings").is_dir():  # same clips, same keys: keep the encoders' work
            for shard in (out / "data").glob("shard-*.tar"):
                shard.unlink()
        else:
            shutil.rmtree(out / "data", ignore_errors=True)
        # cut-outs from frame 0, the target's first frame: their boxes are where the subject starts
        build_world_dataset(out / "data", clips, "train", seed=0, frames=FRAMES, height=SIZE, width=SIZE, subjects=1, samples_per_shard=500, log=log,
                            cutout_frame=0)
        timings["data_s"] = time.time() - t
    (out / "timings.json").write_text(json.dumps(timings, indent=2))

    config = out / "dit.yaml"
    import yaml

    config.write_text(yaml.safe_dump({
        "model": str(out / "base"), "data": str(out / "data"), "output_dir": str(out / "dit"), "seed": 0,
        "max_steps": dit_steps, "batch_size": batch_size, "learning_rate": 1e-3, "lr_scheduler": "constant_with_warmup",
        "warmup_steps": 100, "ema_decay": 0.999,
        # the frozen encoders' work, done once for all runs that share the data: ~4x faster steps
        "cache_layouts": 2, "mode": "full", "sigma_sampling": "shifted_uniform", "shift": 3.0, "checkpoint_every": 100,
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
        "layout": {"p_official_grid": 0.3, "p_drop": 0.0, "min_scale": 0.6, "p_source_boxes": 0.5},
        # The subject covers a tenth of a frame, so the plain loss is mostly background, which the
        # caption predicts: runs without this drew the right scene and no subject after 5000 steps
        # (what they drew of it faded within the first frames). The world knows where subjects are.
        "subject_loss_weight": 5.0,
    }))
    t = time.time()
    train_run(str(config), resume=(out / "dit" / "checkpoints").is_dir())
    timings["dit_s"] = timings.get("dit_s", 0) + time.time() - t
    timings["total_s_this_run"] = time.time() - t_start
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    log(f"world train: done; pipeline at {out / 'dit' / 'final'}")
    return out / "dit" / "final"


def pipeline_from_run(run: str | Path, step: int | None = None):
    """The MagrefPipeline of a `magref world train` run at a transformer checkpoint (the latest
    one when `step` is None): the run's base pipeline with the checkpoint's weights. Comparing
    runs at one step compares them at the same training budget."""
    from safetensors.torch import load_file

    from ..errors import MagrefInputError
    from ..pipeline import MagrefPipeline

    run = Path(run).expanduser()
    ckpts = sorted(p for p in (run / "dit" / "checkpoints").glob("step-*") if (p / "trainable.safetensors").is_file())
    if step is not None:
        ckpts = [p for p in ckpts if int(p.name.split("-")[1]) == step]
    if not (run / "base" / "model_index.json").is_file() or not ckpts:
        have = ", ".join(str(int(p.name.split("-")[1])) for p in sorted((run / "dit" / "checkpoints").glob("step-*"))) or "none"
        raise MagrefInputError(f"{run} has no base pipeline or no transformer checkpoint at step {step} (have: {have}).",
                               "pass a `magref world train --out` folder and one of its checkpoint steps.")
    pipe = MagrefPipeline.from_pretrained(str(run / "base"))
    ema = ckpts[-1] / "ema.safetensors"  # the averaged weights sample better where the run kept them
    pipe.transformer.load_state_dict(load_file(ema if ema.is_file() else ckpts[-1] / "trainable.safetensors"))
    from diffusers import AutoencoderKLWan

    pipe.vae = AutoencoderKLWan.from_pretrained(run_vae(run))  # base may predate stage 1b; the encoder is the same
    return pipe


def export_run(run: str | Path, dest: str | Path, step: int | None = None, dtype=torch.bfloat16) -> Path:
    """Save a run's pipeline (at `step`) as a self-contained folder, weights in `dtype` (bf16
    halves the size of the bundled model; `models.load_pipeline` computes in float32), with
    the generation settings the model was trained for."""
    from ..io import write_json

    pipe = pipeline_from_run(run, step)
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        _to_storage_dtype(getattr(pipe, name), dtype)
    pipe.save_pretrained(dest)
    write_json(dest / "generation_defaults.json", MINIATURE_DEFAULTS)
    return dest


def export_vae(run: str | Path, dest: str | Path, dtype=torch.bfloat16) -> Path:
    """A run's finished VAE alone (as `export_run` stores it), for `magref world train --vae`."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(run_vae(Path(run).expanduser()))
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    _to_storage_dtype(vae, dtype).save_pretrained(dest)
    return dest


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
