"""`magref train CONFIG.yaml [--resume]`: flow matching with region-aware dynamic masking.

One step, as the paper describes it on top of Wan's objective:
    sample   clips + subject cut-outs; draw a random layout; compose the canvas (same code as
             inference); the target video's frame 0 is the canvas (as Wan I2V's image)
    encode   x0 = VAE latent of the video; y = [reference mask; VAE latent of canvas + black
             frames]; CLIP features of the canvas; UMT5 embeddings of the caption (all frozen)
    noise    sigma ~ shifted uniform or logit-normal; x_t = (1 - sigma) x0 + sigma e
    predict  v = transformer([x_t; y], t = 1000 sigma, text, clip); loss = mse(v, e - x0),
             optionally weighted up where the subjects are (`subject_loss_weight`)
Every random draw of step k is seeded by (seed, k, rank), and the data order by (seed, epoch),
so a resumed run reproduces an uninterrupted one bit for bit once weights, optimizer, LR
schedule and EMA are restored. Runs alone or under torchrun (FSDP2 on the transformer blocks;
gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..composition import compose_references
from ..conditioning import canvas_to_tensor, model_input, model_output
from ..data.masking import LayoutSampler
from ..data.shards import ClipDataset
from ..distributed import default_device, init_from_env, rank_and_world
from ..errors import MagrefInputError
from ..io import write_json
from .config import TrainConfig, config_dict

# ----------------------------------------------------------------------------------------------
# Flow matching (Wan / rectified flow)
# ----------------------------------------------------------------------------------------------


def sample_sigmas(n: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if cfg.sigma_sampling == "logit_normal":
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    u = torch.rand(n, generator=generator)
    return cfg.shift * u / (1 + (cfg.shift - 1) * u)  # the sampler's shift, applied to uniform draws


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """x_t = (1 - s) x0 + s e; the velocity target is e - x0; the timestep is 1000 s."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, noise - x0, sigma * 1000


# ----------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------


def latent_subject_mask(masks: np.ndarray, t_stride: int = 4, s_stride: int = 8) -> torch.Tensor:
    """(F, H, W) pixel masks -> (1 + (F-1)/t_stride, H/s_stride, W/s_stride) float {0, 1}: a
    latent cell is marked when any pixel it codes is. The causal VAE codes frame 0 alone and then
    t_stride frames per latent frame, so the temporal groups are [0], [1..4], [5..8], ..."""
    m = torch.from_numpy(np.asarray(masks)).float()
    groups = torch.cat([m[:1], m[1:].unflatten(0, (-1, t_stride)).amax(1)])  # (F_lat, H, W)
    return torch.nn.functional.max_pool2d(groups[:, None], s_stride)[:, 0]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of `values` with `weight` broadcast over them (e.g. one weight per cell shared by
    the channels), normalised by the weights' sum so that it keeps the plain mean's scale."""
    return (values * weight).sum() / weight.expand_as(values).sum()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE with a per-cell weight (B, F, h, w) shared by the channels."""
    if weight is None:
        return torch.nn.functional.mse_loss(pred, target)
    return weighted_mean((pred - target) ** 2, weight[:, None])


def world() -> tuple[int, int]:
    return rank_and_world()


def is_main() -> bool:
    return world()[0] == 0


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        from ..models import load_pipeline

        self.cfg, self.log = cfg, log
        init_from_env()
        self.device = default_device()
        self.rank, self.world_size = world()
        self.out = Path(cfg.output_dir)
        self.dataset = ClipDataset(cfg.data)
        if len(self.dataset) == 0:
            raise MagrefInputError(f"Dataset {cfg.data} has no samples.", "prepare more videos.")
        settings = self.dataset.manifest["settings"]
        self.frames, self.height, self.width = settings["frames"], settings["height"], settings["width"]
        self.layouts = LayoutSampler(cfg.layout.p_official_grid, cfg.layout.p_drop, cfg.layout.min_scale,
                                     p_source_boxes=cfg.layout.p_source_boxes)

        torch.manual_seed(cfg.seed)  # model init (tiny-random) and LoRA init
        self.pipe = load_pipeline(cfg.model)
        self.pipe.to(self.device)
        for frozen in (self.pipe.vae, self.pipe.text_encoder, self.pipe.image_encoder):
            frozen.requires_grad_(False).eval()
        self.transformer = self.pipe.transformer
        self.transformer.train()
        if cfg.mode == "lora":
            from peft import LoraConfig

            self.transformer.requires_grad_(False)
            self.transformer.add_adapter(
                LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules, init_lora_weights="gaussian")
            )
        else:
            self.transformer.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if self.world_size > 1:
            from torch.distributed.fsdp import fully_shard

            for block in self.transformer.blocks:
                fully_shard(block)
            fully_shard(self.transformer)
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        self.trainable_names = [n for n, p in self.transformer.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
        self.ema = None
        if cfg.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.ema_decay)
        if cfg.subject_loss_weight != 1 and self.dataset.masks(0) is None:
            raise MagrefInputError(f"subject_loss_weight = {cfg.subject_loss_weight} needs per-frame subject masks, and {cfg.data} has none.",
                                   "set subject_loss_weight: 1, or use a dataset with masks (e.g. `magref world build`).")
        self.step = 0
        self.cache = None
        if cfg.cache_layouts:
            from .cache import EncodingCache

            self.cache = EncodingCache(self, log)

    # -- data ---------------------------------------------------------------------------------
    def sample_indices(self, step: int) -> list[int]:
        """This rank's dataset indices for `step`: epoch permutations seeded by (seed, epoch)."""
        n, b = len(self.dataset), self.cfg.batch_size
        out = []
        for j in range(b):
            epoch, pos = divmod((step * self.world_size + self.rank) * b + j, n)
            out.append(int(self._epoch_order(epoch)[pos]))
        return out

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset order of one epoch, drawn once per epoch rather than once per sample."""
        if getattr(self, "_order_epoch", None) != epoch:
            self._order, self._order_epoch = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dataset)), epoch
        return self._order

    def example(self, index: int, rng: random.Random) -> dict:
        sample = self.dataset[index]
        keep, layout = self.layouts(len(sample.subjects), self.height, self.width, rng, [s.box for s in sample.subjects])
        stride, patch = self.pipe.spatial_geometry()
        comp = compose_references([sample.subjects[i].image for i in keep], self.height, self.width, layout=layout, spatial_stride=stride, patch_size=patch)
        canvas = canvas_to_tensor(comp.canvas)[0]  # (3, H, W) in [-1, 1]
        video = torch.from_numpy(sample.frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)  # (3, F, H, W)
        if self.cfg.first_frame == "canvas":
            video[:, 0] = canvas
        caption = "" if rng.random() < self.cfg.caption_dropout else sample.caption
        return {"video": video, "canvas": canvas, "latent_mask": torch.from_numpy(comp.latent_mask), "caption": caption}

    @torch.no_grad()
    def encode_visual(self, examples: list[dict], with_target: bool = True, with_condition: bool = True) -> dict:
        """Frozen encoders, through the pipeline's own methods (one code path with inference)."""
        pipe, dev, out = self.pipe, self.device, {}
        if with_target:
            out["x0"] = pipe.encode_video(torch.stack([e["video"] for e in examples])).to(dev)
        if with_condition:
            # the whole batch in one VAE / CLIP call: per-example calls made the condition the most costly part of a CPU step
            canvas = torch.stack([e["canvas"] for e in examples]).to(dev)  # (B, 3, H, W)
            out["condition"] = pipe.prepare_condition(canvas, torch.stack([e["latent_mask"] for e in examples]), self.frames)
            out["image_embeds"] = pipe.encode_image(canvas, dev)
        return out

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return self.pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=self.device,
                                       max_sequence_length=self.pipe.config.text_len)[0]  # as the pipeline samples

    def encode(self, examples: list[dict]) -> dict:
        return {**self.encode_visual(examples), "text": self.encode_text([e["caption"] for e in examples])}

    def batch(self, step: int, rng: random.Random) -> dict:
        indices = self.sample_indices(step)
        if self.cache is None:
            out = self.encode([self.example(i, rng) for i in indices])
        else:
            captions = ["" if rng.random() < self.cfg.caption_dropout else self.dataset.caption(i) for i in indices]
            layouts = [rng.randrange(self.cfg.cache_layouts) for _ in indices]
            out = {**self.cache.batch(indices, layouts, self.device), "text": self.encode_text(captions)}
        if self.cfg.subject_loss_weight != 1:
            ts, ss = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
            marked = torch.stack([latent_subject_mask(self.dataset.masks(i), ts, ss) for i in indices]).to(self.device)
            out["loss_weight"] = 1 + (self.cfg.subject_loss_weight - 1) * marked  # (B, F_lat, h, w)
        return out

    # -- one step -----------------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, timestep: torch.Tensor, batch: dict) -> torch.Tensor:
        """The transformer's flow prediction for the video latent only, with the conditioning
        (`condition`, `text`, `image_embeds` of `batch`) wired as the pipeline's config says."""
        mode = self.pipe.config.get("conditioning", "channel")
        pred = self.transformer(
            hidden_states=model_input(x_t, batch["condition"], mode, self.pipe.config.get("mask_channels", True)),
            timestep=timestep,
            encoder_hidden_states=batch["text"],
            encoder_hidden_states_image=batch["image_embeds"],
            return_dict=False,
        )[0]
        return model_output(pred, mode)

    def train_step(self, step: int) -> float:
        cfg = self.cfg
        seed = int(np.random.SeedSequence([cfg.seed, step, self.rank]).generate_state(1)[0])  # this step's draws
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        batch = self.batch(step, rng)
        x0 = batch["x0"]
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        sigma = sample_sigmas(x0.shape[0], cfg, gen).to(self.device)
        x_t, target, timestep = flow_pair(x0, noise, sigma)
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        with autocast:
            pred = self.predict(x_t, timestep, batch)
        loss = weighted_mse(pred.float(), target.float(), batch.get("loss_weight"))
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        value = loss.detach()
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return float(value)

    # -- the loop -----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume:
            self.load_checkpoint()
        elif is_main() and (self.out / "checkpoints").exists():
            raise MagrefInputError(f"{self.out} already holds a training run.", "pass --resume to continue it, or choose a new output_dir.")
        if is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", {**config_dict(cfg), "fingerprint": cfg.fingerprint()})
            self._trim_metrics(self.step)
        progress = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr, disable=not is_main())
        loss = float("nan")
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            loss = self.train_step(self.step)
            self.step += 1
            seconds = time.perf_counter() - t0
            if is_main() and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                record = {"step": self.step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
                          "samples_per_s": cfg.batch_size * self.world_size / seconds}
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        progress.close()
        self.export()
        if is_main():
            plot_loss(self.out / "metrics.jsonl", self.out / "loss.png")
        if self.world_size > 1:
            # Every rank waits for rank 0's export: a rank that tears the gloo group down while
            # another still uses it aborts the process ("terminate called without an active exception").
            dist.barrier()
        return {"step": self.step, "loss": loss}

    # -- state ----------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        if self.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.transformer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            full = self.transformer.state_dict()
        trainable = set(self.trainable_names)
        return {k: v.detach().cpu().contiguous() for k, v in full.items() if k in trainable}

    def optimizer_state(self) -> dict:
        if self.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.transformer, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        weights, optim = self.trainable_state(), self.optimizer_state()
        if not is_main():
            if self.world_size > 1:
                dist.barrier()  # the checkpoint is complete before any rank moves on
            return
        final = self.out / "checkpoints" / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if self.ema is not None:
            torch.save(self.ema.state_dict(), tmp / "ema.pt")
            if self.world_size == 1:  # the averaged weights by name, for sampling from a checkpoint
                save_file({n: p.detach().cpu().contiguous() for n, p in zip(self.trainable_names, self.ema.shadow_params)}, tmp / "ema.safetensors")
        write_json(tmp / "state.json", {"step": self.step, "fingerprint": self.cfg.fingerprint(), "world_size": self.world_size})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint is complete or absent
        self.log(f"checkpoint: {final}")
        if self.world_size > 1:
            dist.barrier()

    def latest_checkpoint(self) -> Path | None:
        ckpts = sorted(p for p in (self.out / "checkpoints").glob("step-*") if not p.name.endswith(".part") and (p / "state.json").is_file())
        return ckpts[-1] if ckpts else None

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise MagrefInputError(f"--resume: {self.out} has no checkpoint.", "start without --resume.")
        state = json.loads((ckpt / "state.json").read_text())
        if state["fingerprint"] != self.cfg.fingerprint():
            raise MagrefInputError(
                f"--resume: the config differs from the one {ckpt} was trained with.",
                "resume with the same config (only max_steps, checkpoint_every and log_every may change).",
            )
        weights = load_file(ckpt / "trainable.safetensors")
        optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
        if self.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.transformer, weights, options=opts)
            set_optimizer_state_dict(self.transformer, self.optimizer, optim, options=opts)
        else:
            missing = set(self.trainable_names) - set(weights)
            if missing:
                raise MagrefInputError(f"--resume: {ckpt} lacks {len(missing)} trainable weight(s).", "the checkpoint is from another model or mode.")
            self.transformer.load_state_dict(weights, strict=False)
            self.optimizer.load_state_dict(optim)
        self.lr_scheduler.load_state_dict(torch.load(ckpt / "lr_scheduler.pt", weights_only=True))
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(ckpt / "ema.pt", weights_only=True))
        self.step = state["step"]
        self.log(f"resumed from {ckpt} at step {self.step}")

    def _trim_metrics(self, step: int) -> None:
        """Metrics past the resumed step belong to work that was lost; drop them."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def export(self) -> None:
        """final/: the LoRA (pytorch_lora_weights.safetensors) or the whole fine-tuned pipeline."""
        weights = self.trainable_state()
        if self.ema is not None:  # export the averaged weights
            ema_params = self.ema.shadow_params
            weights = {n: p.detach().cpu() for n, p in zip(self.trainable_names, ema_params)} if self.world_size == 1 else weights
        if not is_main():
            return
        final = self.out / "final"
        shutil.rmtree(final, ignore_errors=True)
        if self.cfg.mode == "lora":
            from peft.utils import get_peft_model_state_dict

            from ..pipeline import MagrefPipeline

            if self.world_size == 1:
                self.transformer.load_state_dict(weights, strict=False)
                lora = get_peft_model_state_dict(self.transformer)
            else:
                lora = {k.replace(".default", ""): v for k, v in weights.items() if "lora_" in k}
            MagrefPipeline.save_lora_weights(final, transformer_lora_layers=lora)
        elif self.world_size == 1:
            self.transformer.load_state_dict(weights, strict=False)
            self.pipe.save_pretrained(final)
        else:
            # The live transformer is sharded; rank 0 gathers the full weights into a fresh,
            # unsharded copy of the base pipeline and saves that.
            from ..models import load_pipeline

            torch.manual_seed(self.cfg.seed)
            pipe = load_pipeline(self.cfg.model)
            pipe.transformer.load_state_dict(weights, strict=False)
            pipe.save_pretrained(final)
        self.log(f"exported: {final}")


def plot_loss(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1, alpha=0.5, label="loss")
    if len(losses) >= 5:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log" if min(losses) > 0 and max(losses) / max(min(losses), 1e-12) > 20 else "linear")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run(config_path: str, resume: bool = False, overrides: dict | None = None) -> dict:
    from .config import load_config

    cfg = load_config(config_path, overrides)
    try:
        return Trainer(cfg).train(resume=resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


