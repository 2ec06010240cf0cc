"""Checkpoints of a training run: trainable weights, optimizer, LR schedule and EMA, written whole
or not at all (a `.part` folder renamed when complete), read back for a bit-exact resume, and the
final export (the LoRA file or the whole fine-tuned pipeline). Under FSDP the full state is
gathered on rank 0. A mixin of `Trainer`: it reads the trainer's model, optimizer and config."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed import rank_and_world
from ..errors import MagrefInputError
from ..io import write_json


def is_main() -> bool:
    return rank_and_world()[0] == 0


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (`step-*` with its state.json) of a training run's output_dir."""
    ckpts = sorted(p for p in (Path(output_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".part") and (p / "state.json").is_file())
    return ckpts[-1] if ckpts else None


class Checkpointing:
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

    # The EMA: diffusers' EMAModel over this rank's shards of the trainable weights (the DTensors'
    # local tensors under FSDP), so each rank averages what it holds and no rank holds the whole
    # model twice. Checkpoints and the export gather it; a resume shards it again.
    def local_params(self) -> list[torch.Tensor]:
        return [p.to_local() if hasattr(p, "to_local") else p for p in self.params]

    def ema_full_params(self) -> list[torch.Tensor | None]:
        """The EMA weights whole on rank 0 (None elsewhere; a collective under FSDP, gathered one
        weight at a time so no rank holds a second model)."""
        if self.world_size == 1:
            return [s.detach().cpu() for s in self.ema.shadow_params]
        from torch.distributed.tensor import DTensor

        out = []
        for s, p in zip(self.ema.shadow_params, self.params):
            full = DTensor.from_local(s, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            out.append(full.cpu() if is_main() else None)
            del full
        return out

    def ema_state(self) -> dict:
        return {**self.ema.state_dict(), "shadow_params": self.ema_full_params()}

    def load_ema_state(self, state: dict) -> None:
        if self.world_size > 1:
            from torch.distributed.tensor import distribute_tensor

            # every rank read the whole file: each keeps its shard, no communication
            state["shadow_params"] = [distribute_tensor(full.to(p.device), p.device_mesh, p.placements, src_data_rank=None).to_local()
                                      for full, p in zip(state["shadow_params"], self.params)]
        else:
            state["shadow_params"] = [full.to(p.device) for full, p in zip(state["shadow_params"], self.params)]
        self.ema.load_state_dict(state)

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        weights, optim = self.trainable_state(), self.optimizer_state()
        ema = self.ema_state() if self.ema is not None else None
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
        if ema is not None:
            torch.save(ema, tmp / "ema.pt")
            # the averaged weights by name, for sampling from a checkpoint
            save_file({n: p.contiguous() for n, p in zip(self.trainable_names, ema["shadow_params"])}, tmp / "ema.safetensors")
        write_json(tmp / "state.json", {"step": self.step, "fingerprint": self.cfg.fingerprint(), "world_size": self.world_size})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint is complete or absent
        self.log(f"checkpoint: {final}")
        if self.world_size > 1:
            dist.barrier()

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.out)

    def _config_changes(self) -> str:
        """': key was -> is now, ...' against the run's recorded config.json ('' without one)."""
        from .config import TrainConfig, config_dict

        try:
            was = json.loads((self.out / "config.json").read_text())
        except (OSError, ValueError):
            return ""
        now = config_dict(self.cfg)
        # a key the run's config.json predates had its default then (the fingerprint drops such keys at their defaults)
        was = {**config_dict(TrainConfig(model=self.cfg.model, data=self.cfg.data, output_dir=self.cfg.output_dir)), **was}
        changed = [f"{k} was {was[k]!r}, is now {now[k]!r}" for k in sorted(now) if k in was and was[k] != now[k] and k != "output_dir"]
        return ": " + "; ".join(changed) if changed else ""

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise MagrefInputError(f"--resume: {self.out} has no checkpoint.", "start without --resume.")
        state = json.loads((ckpt / "state.json").read_text())
        if state["fingerprint"] != self.cfg.fingerprint():
            raise MagrefInputError(
                f"--resume: the config differs from the one {ckpt} was trained with{self._config_changes()}.",
                "resume with the same config (only max_steps, checkpoint_every and log_every may change; max_steps not under a "
                "decaying lr_scheduler, whose shape it sets).",
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
            self.load_ema_state(torch.load(ckpt / "ema.pt", weights_only=True, mmap=True))  # each rank reads its shards' bytes
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
        if self.ema is not None:  # export the averaged weights
            weights = dict(zip(self.trainable_names, self.ema_full_params()))
        else:
            weights = self.trainable_state()
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
