"""`magref train CONFIG.yaml [--resume]`: flow matching with region-aware dynamic masking.

One step, as the paper describes it on top of Wan's objective:
    sample   clips + subject cut-outs; draw a random layout; compose the canvas (same code as
             inference); the target video's frame 0 is the canvas (as Wan I2V's image)
    encode   x0 = VAE latent of the video; y = [reference mask; VAE latent of canvas + black
             frames]; CLIP features of the canvas; UMT5 embeddings of the caption (all frozen)
    noise    sigma ~ shifted uniform or logit-normal; x_t = (1 - sigma) x0 + sigma e
    predict  v = transformer([x_t; y], t = 1000 sigma, text, clip); loss = mse(v, e - x0),
             optionally weighted up where the subjects are (`subject_loss_weight`)
Every random draw of step k is seeded by (seed, k, shard), and the data order by (seed, epoch),
so a resumed run reproduces an uninterrupted one bit for bit once weights, optimizer, LR
schedule and EMA are restored. A shard is one micro-batch of one process
(`gradient_accumulation_steps` of them per process), so N processes and one process
accumulating N micro-batches take the same steps. Runs alone or under torchrun (FSDP2 on the transformer blocks;
gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import functools
import json
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
from ..conditioning import canvas_to_tensor
from ..data.masking import LayoutSampler
from ..data.shards import ClipDataset
from ..distributed import default_device, init_from_env, launch_rank, rank_and_world
from ..errors import MagrefInputError
from ..io import folder_lock, write_json
from .checkpointing import Checkpointing, is_main
from .config import TrainConfig, config_dict
from .flow import flow_pair, latent_subject_mask, sample_sigmas, weighted_mse


def layout_key(layout) -> dict:
    """The layout settings as the encoding cache's key sees them: a setting at its default of
    0 that older caches did not know is left out, so their keys stay valid."""
    return {k: v for k, v in vars(layout).items() if k != "p_source_order" or v}


def world() -> tuple[int, int]:
    return rank_and_world()


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class Trainer(Checkpointing):
    def __init__(self, cfg: TrainConfig, log=print, encode_only: bool = False):
        """`encode_only`: build the encoding caches and stop (`magref encode`): no optimizer."""
        from ..models import load_pipeline

        self.cfg, self.log = cfg, log
        if encode_only and not (cfg.cache_layouts and cfg.cache_encodings):
            setting = "cache_layouts: 0" if not cfg.cache_layouts else "cache_encodings: false"
            raise MagrefInputError(f"{cfg.data}: nothing to store, the config has {setting}.",
                                   "set cache_layouts: 2 (layouts per clip) and cache_encodings: true in the config.")
        from datetime import timedelta

        # A rank that has built its share of the encoding cache waits for the others at a barrier,
        # up to one part's encoding at 14B: longer than NCCL's default 10 minutes.
        init_from_env(timeout=timedelta(hours=2), share_gpus=encode_only)  # `magref encode`: more processes than GPUs
        self.device = default_device()
        self.rank, self.world_size = world()
        self.out = Path(cfg.output_dir)
        self.dataset = self.stream = None
        if cfg.data_loading == "stream":
            from ..data.stream import ClipStream

            self.stream = ClipStream(cfg.data, cfg.seed, cfg.shuffle_buffer, self.rank, self.world_size)
            manifest = self.stream.manifest
        else:
            self.dataset = ClipDataset(cfg.data)
            manifest = self.dataset.manifest
        if not manifest.get("num_samples", sum(len(s["keys"]) for s in manifest["shards"])):
            raise MagrefInputError(f"Dataset {cfg.data} has no samples.", "prepare more videos.")
        if self.dataset is not None:
            _ = self.epoch_pool  # repeats that leave no clip are refused before anything loads
        settings = manifest["settings"]
        self.frames, self.height, self.width = settings["frames"], settings["height"], settings["width"]
        self.layouts = LayoutSampler(cfg.layout.p_official_grid, cfg.layout.p_drop, cfg.layout.min_scale,
                                     p_source_boxes=cfg.layout.p_source_boxes, p_source_order=cfg.layout.p_source_order)

        torch.manual_seed(cfg.seed)  # model init (tiny-random) and LoRA init
        self.pipe = load_pipeline(cfg.model)
        if encode_only:  # the transformer stays where it was loaded: encoding does not use it
            for encoder in (self.pipe.vae, self.pipe.text_encoder, self.pipe.image_encoder):
                encoder.to(self.device)
        else:
            self.pipe.to(self.device)
        for frozen in (self.pipe.vae, self.pipe.text_encoder, self.pipe.image_encoder):
            frozen.requires_grad_(False).eval()
        if cfg.subject_loss_weight != 1 and (self.dataset.masks(0) if self.dataset is not None else self.stream.first().masks) is None:
            raise MagrefInputError(f"subject_loss_weight = {cfg.subject_loss_weight} needs per-frame subject masks, and {cfg.data} has none.",
                                   "set subject_loss_weight: 1, or use a dataset with masks (e.g. `magref world build`).")
        self.step = 0
        self.cache = self.text_cache = None
        if cfg.cache_layouts:
            self.setup_caches()
        if encode_only:
            return
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

            self.ema = EMAModel(self.local_params(), decay=cfg.ema_decay)

    def setup_caches(self) -> None:
        """The K-layout encodings (`cache_layouts`) and the caption embeddings, built where missing
        and read from `<data>/encodings/`; with `cache_encodings: false` the same encodings are
        computed live each step. Once both are stored, the encoders leave the accelerator."""
        from .cache import BATCH, PART, EncodingCache, TextCache, cache_key

        cfg, n = self.cfg, len(self.dataset)
        if not cfg.cache_encodings:
            return
        data_settings = self.dataset.manifest["settings"]
        settings = {"seed": cfg.seed, "k": cfg.cache_layouts, "first_frame": cfg.first_frame, "layout": layout_key(cfg.layout),
                    "frames": self.frames, "height": self.height, "width": self.width, "clips": self.dataset.index,
                    **({"clip_codec": data_settings["clip_codec"]} if data_settings.get("clip_codec", "raw") != "raw" else {})}  # lossy clips differ
        storage = {**({"dtype": cfg.cache_dtype} if cfg.cache_dtype != "float32" else {}),
                   **({"part_clips": cfg.cache_part_clips} if cfg.cache_part_clips != PART else {})}  # older caches keep their keys
        # batched encodings differ in the last bits with what shares a call: the examples per call,
        # at most the clips per build call x layouts (the caption cache does not depend on it)
        batched = {"encode_batch": min(cfg.cache_encode_batch, BATCH * cfg.cache_layouts), "build_clips": BATCH} if cfg.cache_encode_batch != 1 else {}
        dtype, where = getattr(torch, cfg.cache_dtype), dict(rank=self.rank, world_size=self.world_size, log=self.log, part_clips=cfg.cache_part_clips)
        root = Path(cfg.data) / "encodings"
        self.cache = EncodingCache(root / cache_key(settings | storage | batched, [self.pipe.vae, self.pipe.image_encoder]), cfg.cache_layouts, n,
                                   self.encode_clips, cfg.first_frame == "clip", dtype=dtype, **where)
        import hashlib

        captions = hashlib.sha256(json.dumps([self.dataset.caption(i) for i in range(n)]).encode()).hexdigest()
        text_key = cache_key({"captions": captions, "text_len": self.pipe.config.text_len, **storage}, [self.pipe.text_encoder], native=True)
        self.text_cache = TextCache(root / f"text-{text_key}", n, self.encode_captions, lambda: self.encode_text([""])[0], self.pipe.config.text_len,
                                    dtype=dtype, **where)
        if self.device.type != "cpu":  # nothing runs them any more: their memory goes to the transformer
            for frozen in (self.pipe.vae, self.pipe.text_encoder, self.pipe.image_encoder):
                frozen.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -- data ---------------------------------------------------------------------------------
    @property
    def shards(self) -> int:
        """Data-parallel shards per step: processes x accumulated micro-batches."""
        return self.world_size * self.cfg.gradient_accumulation_steps

    def shard(self, micro: int) -> int:
        """This process's `micro`-th micro-batch among the step's `shards`: the draws it makes are
        those a process of that rank in a world of `shards` processes would make."""
        return self.rank * self.cfg.gradient_accumulation_steps + micro

    def sample_indices(self, step: int, shard: int | None = None) -> list[int]:
        """A shard's dataset indices for `step` (by default this process's first): epoch
        permutations seeded by (seed, epoch)."""
        n, b = len(self.epoch_pool), self.cfg.batch_size
        shard = self.shard(0) if shard is None else shard
        out = []
        for j in range(b):
            epoch, pos = divmod((step * self.shards + shard) * b + j, n)
            out.append(int(self._epoch_order(epoch)[pos]))
        return out

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset order of one epoch, drawn once per epoch rather than once per sample."""
        if getattr(self, "_order_epoch", None) != epoch:
            self._order, self._order_epoch = self.epoch_pool[np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.epoch_pool))], epoch
        return self._order

    @functools.cached_property
    def epoch_pool(self) -> np.ndarray:
        """The dataset indices one epoch shows, each clip repeated as `repeats_by_references` says."""
        repeats = self.cfg.repeats_by_references
        if not repeats:
            return np.arange(len(self.dataset))
        counts = [self.dataset.references(i) for i in range(len(self.dataset))]
        pool = np.array([i for i, k in enumerate(counts) for _ in range(repeats[k - 1] if 0 < k <= len(repeats) else 1)], dtype=np.int64)
        if not len(pool):
            raise MagrefInputError(f"repeats_by_references = {repeats} leaves no clip of {self.cfg.data} (their references: {sorted(set(counts))}).",
                                   "give a repeat of 1 or more to a number of references the data has.")
        return pool

    def example(self, index: int, rng: random.Random) -> dict:
        return self.example_of(self.dataset[index], rng)

    def example_of(self, sample, rng: random.Random) -> dict:
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
    def encode_visual(self, examples: list[dict], with_target: bool = True, with_condition: bool = True, one_at_a_time: bool = False) -> dict:
        """Frozen encoders, through the pipeline's own methods (one code path with inference).
        `one_at_a_time`: one example per encoder call, so that an encoding does not depend on
        which examples share its batch (the VAE's convolutions differ in the last bits with the
        batch size): the cache and the live K-layout path then agree bit for bit."""
        if one_at_a_time and len(examples) > 1:
            parts = [self.encode_visual([e], with_target, with_condition) for e in examples]
            return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        pipe, dev, out = self.pipe, self.device, {}
        if with_target:
            out["x0"] = pipe.encode_video(torch.stack([e["video"] for e in examples])).to(dev)
        if with_condition:
            # the whole batch in one VAE / CLIP call: per-example calls made the condition the most costly part of a CPU step
            canvas = torch.stack([e["canvas"] for e in examples]).to(dev)  # (B, 3, H, W)
            out["condition"] = pipe.prepare_condition(canvas, torch.stack([e["latent_mask"] for e in examples]), self.frames)
            out["image_embeds"] = pipe.encode_image(canvas, dev)
        return out

    def encode_clips(self, indices: list[int], k: int) -> dict:
        """The frozen encoders' outputs of clips x k layouts (each drawn by `cache.layout_rng`), for
        the encoding cache: x0 once per clip when the target is the clip's own (first_frame: clip)."""
        from .cache import layout_rng

        examples = [self.example(i, layout_rng(self.cfg.seed, i, j)) for i in indices for j in range(k)]
        per_clip_target = self.cfg.first_frame == "clip"
        enc = self.encode_in_batches(examples, with_target=not per_clip_target)
        if per_clip_target:
            enc["x0"] = self.encode_in_batches(examples[::k], with_condition=False)["x0"]
        n = len(indices)
        return {"x0": enc["x0"].unflatten(0, (n, -1)), "condition": enc["condition"].unflatten(0, (n, k)),
                "image_embeds": enc["image_embeds"].unflatten(0, (n, k))}

    def encode_in_batches(self, examples: list[dict], **what) -> dict:
        """`encode_visual` of `cache_encode_batch` examples per encoder call (1: one at a time)."""
        size = self.cfg.cache_encode_batch
        if size == 1:
            return self.encode_visual(examples, one_at_a_time=True, **what)
        parts = [self.encode_visual(examples[i:i + size], **what) for i in range(0, len(examples), size)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def encode_layouts(self, indices: list[int], layouts: list[int]) -> dict:
        """What the cache holds for each clip at its chosen layout, computed live
        (`cache_encodings: false`)."""
        from .cache import layout_rng

        return self.encode_visual([self.example(i, layout_rng(self.cfg.seed, i, k)) for i, k in zip(indices, layouts)], one_at_a_time=True)

    def encode_captions(self, indices: list[int]) -> dict:
        """The clips' caption embeddings for the caption cache, trimmed after the longest caption's
        tokens (the text encoder's output is zero beyond each caption's, as Wan pads)."""
        text = self.encode_text([self.dataset.caption(i) for i in indices])
        used = int(text.abs().amax(dim=(0, 2)).nonzero().max()) + 1 if text.abs().amax() > 0 else 1
        return {"text": text[:, :used]}

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return self.pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=self.device,
                                       max_sequence_length=self.pipe.config.text_len)[0]  # as the pipeline samples

    def encode(self, examples: list[dict]) -> dict:
        return {**self.encode_visual(examples), "text": self.encode_text([e["caption"] for e in examples])}

    def batch(self, step: int, rng: random.Random, shard: int | None = None) -> dict:
        if self.stream is not None:  # the next samples of this rank's stream
            samples = self.stream.take(self.cfg.batch_size)
            return self.with_loss_weight(self.encode([self.example_of(s, rng) for s in samples]), [s.masks for s in samples])
        indices = self.sample_indices(step, shard)
        if not self.cfg.cache_layouts:
            out = self.encode([self.example(i, rng) for i in indices])
        else:
            dropped = [rng.random() < self.cfg.caption_dropout for _ in indices]
            layouts = [rng.randrange(self.cfg.cache_layouts) for _ in indices]
            if self.cache is not None:
                out = {**self.cache.batch(indices, layouts, self.device), "text": self.text_cache.batch(indices, dropped, self.device)}
            else:
                out = {**self.encode_layouts(indices, layouts),
                       "text": self.encode_text(["" if d else self.dataset.caption(i) for i, d in zip(indices, dropped)])}
        return self.with_loss_weight(out, [self.dataset.masks(i) for i in indices] if self.cfg.subject_loss_weight != 1 else None)

    def with_loss_weight(self, out: dict, masks: list | None) -> dict:
        """`subject_loss_weight`: the latent cells where a subject is count more."""
        if self.cfg.subject_loss_weight != 1:
            if any(m is None for m in masks):
                raise MagrefInputError(f"A sample of {self.cfg.data} has no subject masks.", "set subject_loss_weight: 1, or use a dataset with masks.")
            ts, ss = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
            marked = torch.stack([latent_subject_mask(m, ts, ss) for m in masks]).to(self.device)
            out["loss_weight"] = 1 + (self.cfg.subject_loss_weight - 1) * marked  # (B, F_lat, h, w)
        return out

    # -- one step -----------------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, timestep: torch.Tensor, batch: dict) -> torch.Tensor:
        """The transformer's flow prediction for the video latent only, with the conditioning
        (`condition`, `text`, `image_embeds` of `batch`) wired as the pipeline's config says."""
        return self.pipe.conditioned_velocity(x_t, batch["condition"], timestep, batch["text"], batch["image_embeds"])

    def train_step(self, step: int) -> float:
        cfg, accum = self.cfg, self.cfg.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            if self.world_size > 1 and accum > 1:  # FSDP reduces the gradients once, after the last micro-batch
                self.transformer.set_requires_gradient_sync(micro == accum - 1)
            loss = self.micro_loss(step, self.shard(micro)) / accum
            loss.backward()
            total += loss.detach()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.local_params())
        if self.world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        return float(total)

    def micro_loss(self, step: int, shard: int) -> torch.Tensor:
        """The flow-matching loss of one shard's micro-batch of `step`; its draws are seeded by
        (seed, step, shard), so they do not depend on how shards are spread over processes."""
        cfg = self.cfg
        seed = int(np.random.SeedSequence([cfg.seed, step, shard]).generate_state(1)[0])
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        batch = self.batch(step, rng, shard)
        x0 = batch["x0"]
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        sigma = sample_sigmas(x0.shape[0], cfg, gen).to(self.device)
        x_t, target, timestep = flow_pair(x0, noise, sigma)
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        with autocast:
            pred = self.predict(x_t, timestep, batch)
        return weighted_mse(pred.float(), target.float(), batch.get("loss_weight"))

    # -- the loop -----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume:
            self.load_checkpoint()
            if self.stream is not None:  # the same stream, past what the run has read
                saved = json.loads((self.latest_checkpoint() / "state.json").read_text()).get("world_size", 1)
                if saved != self.world_size:
                    raise MagrefInputError(f"--resume: {self.out} streamed its data over {saved} process(es), not {self.world_size}: "
                                           "each process reads its own shards, so the stream would not continue.",
                                           f"resume with {saved} process(es), or use data_loading: random.")
                self.stream.skip(self.step * cfg.gradient_accumulation_steps * cfg.batch_size)
        elif is_main() and self.latest_checkpoint() is not None:
            raise MagrefInputError(f"{self.out} already holds a training run.", "pass --resume to continue it, or choose a new output_dir.")
        elif is_main() and (self.out / "checkpoints").is_dir():
            # a first save cut short leaves only `.part` folders: nothing to resume, so the run starts over;
            # anything else there (a checkpoint without its state) is not ours to overwrite
            kept = sorted(p.name for p in (self.out / "checkpoints").iterdir() if not p.name.endswith(".part"))
            if kept:
                raise MagrefInputError(f"{self.out / 'checkpoints'} holds {', '.join(kept)} but no complete checkpoint (one with its state.json), "
                                       "so the run can neither resume nor start over there.", "move those away, or choose a new output_dir.")
            for part in (self.out / "checkpoints").glob("step-*.part"):
                shutil.rmtree(part, ignore_errors=True)
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
                          "samples_per_s": cfg.batch_size * self.shards / seconds}
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
    # One trainer per output folder, refused before anything loads (a second model on the same GPU,
    # or hours of cache building, before a refusal would be worse). Rank 0 holds it: the ranks of
    # one torchrun share the folder by design. A resume of a folder that does not exist is not locked
    # (the lock would create the folder): the trainer refuses it, having found no checkpoint.
    unheld = launch_rank() != 0 or (resume and not Path(cfg.output_dir).is_dir())
    held = nullcontext() if unheld else folder_lock(
        cfg.output_dir, ".magref-train.lock", "magref train", "wait for that run to finish (or stop it), then resume; or use another output_dir.")
    try:
        with held:
            return Trainer(cfg).train(resume=resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def encode(config_path: str, overrides: dict | None = None) -> list[Path]:
    """`magref encode`: build the config's encoding caches (this process's share under torchrun)
    and return their folders; `magref train` with the same config then reads them."""
    from .config import load_config

    cfg = load_config(config_path, overrides)
    try:
        trainer = Trainer(cfg, encode_only=True)  # refuses a config that stores nothing
        return [trainer.cache.root, trainer.text_cache.root]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
