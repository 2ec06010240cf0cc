"""Resolve a `--model` argument to a MagrefPipeline.

Accepted: `miniature` (the bundled trained miniature MAGREF, the default), `tiny-random`
(built in code), a local MagrefPipeline folder (`model_index.json`,
as written by `save_pretrained`), or a hub id (`org/name`), which is fetched only because the user
named it. Anything else gets a clear error naming what was expected.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from pathlib import Path

from .errors import CheckpointError, MagrefInputError

TINY_RANDOM = "tiny-random"
MINIATURE = "miniature"  # trained on the procedural world by `magref world train` (docs/miniature-world.md)
DEFAULT_MODEL = MINIATURE
MINIATURE_PATH = Path(__file__).parent / "assets" / "models" / "miniature"
WORLD_VAE_PATH = MINIATURE_PATH / "vae"  # the miniature's trained VAE (`magref world train --vae`)
DEFAULTS_FILE = "generation_defaults.json"  # a model folder's own settings: size, frames, steps, ...
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_pipeline(model: str | None = None, solver: str | None = None, shift: float | None = None, torch_dtype=None):
    from .schedulers import make_scheduler

    model = model or DEFAULT_MODEL
    if model == TINY_RANDOM:
        from .tiny import tiny_random_pipeline

        pipe = tiny_random_pipeline()
    elif model == MINIATURE:
        import torch

        # stored in bf16 to keep the package small; computed in float32 on any CPU
        pipe = _load_path_or_hub(str(MINIATURE_PATH), torch_dtype or torch.float32)
    else:
        pipe = _load_path_or_hub(model, torch_dtype)
    if solver is not None or shift is not None:
        from .schedulers import solver_name

        pipe.scheduler = make_scheduler(solver or solver_name(pipe.scheduler), shift if shift is not None else pipe.scheduler.config.flow_shift)
    return pipe


def _load_path_or_hub(model: str, torch_dtype):
    from .pipeline import MagrefPipeline

    path = Path(model).expanduser()
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    if path.exists():
        if path.is_dir() and (path / "model_index.json").is_file():
            try:
                return MagrefPipeline.from_pretrained(str(path), **kwargs)
            except Exception as e:  # a broken folder: name the folder and the cause
                raise CheckpointError(
                    f"Could not load the MAGREF pipeline folder {path} ({type(e).__name__}: {e}).",
                    "check that the folder is complete, or re-create it with save_pretrained / `magref convert`.",
                ) from None
        if path.is_dir() and (path / "config.json").is_file() and '"WanModel"' in (path / "config.json").read_text():
            from .checkpoints import detect_kind, load_official_pipeline

            if detect_kind(path) == "official-magref":  # converted in memory; `magref convert` saves it
                return load_official_pipeline(path, torch_dtype)
            raise CheckpointError(
                f"{path} is an official transformer folder without the VAE and encoders beside it.",
                "pass the complete official MAGREF folder, or a MagrefPipeline folder.",
            )
        raise CheckpointError(
            f"{path} is not a MagrefPipeline folder (no model_index.json).",
            f"pass --model {MINIATURE}, {TINY_RANDOM}, a folder written by MagrefPipeline.save_pretrained, or a hub id.",
        )
    if _HUB_ID.match(model):
        try:
            return MagrefPipeline.from_pretrained(model, **kwargs)
        except Exception as e:
            raise CheckpointError(
                f"Could not load model {model!r} from a local path or the hub ({type(e).__name__}: {e}).",
                "check the id and your network, or download it and pass the local folder.",
            ) from None
    raise MagrefInputError(
        f"Unknown model {model!r}: no such path, and not a hub id.",
        f"pass --model {MINIATURE}, {TINY_RANDOM}, a local MagrefPipeline folder, or org/name.",
    )


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # what `magref train` (mode: lora) writes to final/


def resolve_lora(path: str | Path, scale: float = 1.0) -> dict:
    """What a `--lora` argument names, found (and fetched, if a hub id) once, before the model
    loads: {"hub_id" (for a hub id), "file", "scale"}. Accepted: a .safetensors file, a folder
    holding pytorch_lora_weights.safetensors (a `magref train` final/ folder) or a single
    .safetensors, or a hub id (`org/name`), whose .safetensors files are fetched."""
    p = Path(path).expanduser()
    fix = "pass the final/ folder of a `magref train` LoRA run (mode: lora), the LoRA's .safetensors file, or a hub id."
    hub = {}
    if not p.exists() and _HUB_ID.match(str(path)):
        from huggingface_hub import snapshot_download

        try:
            p = Path(snapshot_download(str(path), allow_patterns=["*.safetensors"]))
        except Exception as e:  # offline, unknown id, no access
            raise MagrefInputError(f"Could not fetch LoRA {path} from the hub ({type(e).__name__}).",
                                   "check the id and your network, or download it and pass the local file.") from None
        hub = {"hub_id": str(path)}
    if not p.exists():
        raise MagrefInputError(f"LoRA {p} does not exist.", fix)
    if p.is_dir():
        files = [p / LORA_WEIGHTS] if (p / LORA_WEIGHTS).is_file() else sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise MagrefInputError(f"LoRA folder {path} holds {len(files)} .safetensors files and no {LORA_WEIGHTS}.", "pass the LoRA file itself.")
        p = files[0]
    elif p.suffix != ".safetensors":
        raise MagrefInputError(f"LoRA {p} is not a .safetensors file.", fix)
    try:  # the header only: a truncated or foreign file is refused before the model loads
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise MagrefInputError(f"LoRA {p} is not a readable safetensors file ({type(e).__name__}).", fix) from None
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise MagrefInputError(f"LoRA scale {scale} is not a finite number.", "use e.g. --lora-scale 1.0.")
    return {**hub, "file": str(p), "scale": scale}


def apply_loras(pipe, loras: list[dict]) -> list[dict]:
    """Fuse LoRAs (resolve_lora's), each at its scale, into the transformer's weights (diffusers:
    load each as an adapter, weight them, fuse, unload the adapter layers): the model then runs at
    the base model's speed and combines with fp8, compile, offloading and context parallelism like
    any other weights. The community formats' full weight and bias deltas, which diffusers would
    drop, are added directly (checkpoints/lora_formats.py); every entry of a file is used or the
    file is refused. Returns what the sidecar records: each LoRA with its file's sha256."""
    from safetensors.torch import load_file

    from .checkpoints.lora_formats import apply_deltas, check_consumed, deltas_to_diffusers, lora_pair_count, split_lora
    from .io import sha256_file

    fix = "pass a LoRA trained for this base model (`magref train` with mode: lora)."
    peft_log = logging.getLogger("diffusers.loaders.peft")  # logs a failed load in full before raising; we report it in one line
    level = peft_log.level
    # every file read and its deltas checked against the bare transformer before any adapter wraps its layers
    files = [(Path(lora["file"]), *split_lora(load_file(lora["file"]))) for lora in loras]
    deltas = [(deltas_to_diffusers(file_deltas, pipe.transformer), lora["scale"]) for (_, _, file_deltas), lora in zip(files, loras)]
    adapters, weights = [], []
    for i, ((f, pairs, file_deltas), lora) in enumerate(zip(files, loras)):
        name = f"lora{i}"
        if not pairs:
            if not file_deltas:
                raise CheckpointError(f"{f} holds no weights.", fix)
            continue
        peft_log.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)  # several adapters are what we ask for
                converted = pipe.lora_state_dict(pairs)  # diffusers' reading of the community formats
                pipe.load_lora_weights(dict(converted), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{f} is not a LoRA of this model's transformer ({type(e).__name__}: {first})", fix) from None
        finally:
            peft_log.setLevel(level)
        if name not in (getattr(pipe.transformer, "peft_config", None) or {}):
            raise CheckpointError(f"{f} holds no LoRA weights for the MAGREF transformer.", fix)
        check_consumed(pipe.transformer, name, converted, f, lora_pair_count(pairs))
        adapters.append(name)
        weights.append(lora["scale"])
    if adapters:
        pipe.set_adapters(adapters, adapter_weights=weights)
        pipe.fuse_lora(adapter_names=adapters)
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    for converted, scale in deltas:
        apply_deltas(pipe.transformer, converted, scale)
    return [{**lora, "sha256": sha256_file(lora["file"])} for lora in loras]


def generation_defaults(model: str | None) -> dict:
    """Settings a model was made for (`generation_defaults.json` in its folder: height, width,
    frames, steps, guidance, shift, fps, negative_prompt, ...), over the official 480p defaults
    (`defaults.OFFICIAL_SETTINGS`), keyed as GenerationSettings. Read without loading weights,
    so input checks still come before the model loads."""
    import json

    from .defaults import OFFICIAL_SETTINGS

    out = dict(OFFICIAL_SETTINGS, negative_prompt=None)
    path = _local_path(model or DEFAULT_MODEL) / DEFAULTS_FILE
    if path.is_file():
        try:
            given = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}).", f"fix or delete {path.name}; the official defaults apply without it.") from None
        if not isinstance(given, dict):
            raise CheckpointError(f"{path} is not a JSON object of settings.", 'write e.g. {"height": 64, "width": 64, "frames": 13}.')
        out.update({k: v for k, v in given.items() if k in out})
    return out


def spatial_geometry(model: str | None) -> tuple[int, int]:
    """(VAE spatial stride, transformer patch) of a model, from its configs without loading weights:
    references are composed in these latent cells. The official (8, 2) where a model has no local
    folder (tiny-random, a hub id not yet fetched); the pipeline checks the composition it gets."""
    import json

    root = _local_path(model or DEFAULT_MODEL)
    stride, patch = 8, 2
    try:
        vae = json.loads((root / "vae" / "config.json").read_text())
        stride = int(vae.get("scale_factor_spatial") or 8)
        patch = int(json.loads((root / "transformer" / "config.json").read_text()).get("patch_size", [1, 2, 2])[1])
    except (OSError, ValueError, TypeError, IndexError):
        pass  # not a local folder, or not one of ours: `load_pipeline` will say what is wrong with it
    return stride, patch


def load_model(spec) -> tuple:
    """A request's model (request.ModelSpec): the pipeline with its LoRAs fused, its fingerprint
    and the LoRA records. The fingerprint is of the weights as loaded, LoRAs included (MagCache's
    ratios are kept per fingerprint), before fp8 or offloading."""
    pipe = load_pipeline(spec.id)
    fingerprint = model_fingerprint(spec.id, pipe)
    records = apply_loras(pipe, list(spec.loras))
    if records:
        fingerprint = "sha256:" + hashlib.sha256(" ".join([fingerprint] + [f"{r['sha256']}@{r['scale']}" for r in records]).encode()).hexdigest()[:16]
    return pipe, fingerprint, records


def _local_path(model: str) -> Path:
    return MINIATURE_PATH if model == MINIATURE else Path(model).expanduser()


def model_fingerprint(model: str | None, pipe=None) -> str:
    """A cheap identity for the sidecar: sha256 over configs and weight file names/sizes for a
    folder; over the transformer weights for models built in code (they are tiny)."""
    model = model or DEFAULT_MODEL
    h = hashlib.sha256()
    path = _local_path(model)
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                rel = f.relative_to(path).as_posix()
                h.update(rel.encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
                else:
                    h.update(str(f.stat().st_size).encode())
        return "sha256:" + h.hexdigest()[:16]
    if pipe is not None:
        for name, tensor in sorted(pipe.transformer.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()[:16]
    return "id:" + model

