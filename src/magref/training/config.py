"""Training configuration: YAML in, validated dataclass out.

A wrong key or value is a `MagrefInputError` naming the key and the fix (CLI exit 2), never a
run that silently ignores a typo.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import MagrefInputError

CHOICES = {
    "mode": ("full", "lora"),
    "sigma_sampling": ("shifted_uniform", "logit_normal"),
    "mixed_precision": ("no", "bf16"),
    "lr_scheduler": ("constant", "constant_with_warmup", "linear", "cosine"),
    "first_frame": ("canvas", "clip"),
    "cache_dtype": ("float32", "bfloat16"),
    "data_loading": ("random", "stream"),
}


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class LayoutSettings:
    p_official_grid: float = 0.3
    p_drop: float = 0.2
    min_scale: float = 0.5
    p_source_boxes: float = 0.0  # the subjects' own boxes in the clip (data/masking.py)
    p_source_order: float = 0.0  # other layouts keep the subjects' left-to-right order (data/masking.py)


@dataclass
class TrainConfig:
    data: str
    output_dir: str
    model: str = "tiny-random"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 1  # per process and micro-batch
    # > 1: each optimizer step averages this many micro-batches, drawn as that many more
    # data-parallel processes would draw theirs: one process with 2 here takes the steps of two
    # processes with 1 (the same data, noise and layouts), with the memory of one.
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    mode: str = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    sigma_sampling: str = "shifted_uniform"
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    checkpoint_every: int = 100
    log_every: int = 1
    caption_dropout: float = 0.0
    first_frame: str = "canvas"  # the target's frame 0: the canvas (as Wan I2V's image) or the clip's
    layout: LayoutSettings = field(default_factory=LayoutSettings)
    # > 0: encode every clip once with this many fixed layouts (VAE latents, condition, CLIP
    # features, kept beside the data) and train from those; steps cost the transformer alone.
    cache_layouts: int = 0
    # false: the same K layouts per clip encoded live every step (what the stored cache is tested
    # against: training from either is bit-equal); true: stored once and read back.
    cache_encodings: bool = True
    cache_part_clips: int = 250  # clips per cache file
    cache_dtype: str = "float32"  # bfloat16 halves a large model's cache (and rounds what it trains on)
    # examples (clip x layout) per encoder call while the cache is built. 1: the cache equals the live path bit for bit
    # (the VAE's convolutions differ in the last bits with the batch size); 16: a GPU, whose small
    # encodes are bound by kernel launches, builds it many times faster.
    cache_encode_batch: int = 1
    # random: any sample at any step (a local dataset); stream: this rank's shards read front to
    # back, shuffled by shard and within `shuffle_buffer` samples (data on network or object storage)
    data_loading: str = "random"
    shuffle_buffer: int = 100
    # > 1: the flow loss of latent cells where a subject is (any pixel of the frames the cell
    # codes) counts this many times a background cell's; needs datasets with per-frame masks.
    subject_loss_weight: float = 1.0
    # how often an epoch shows a clip with k references (entry k-1; clips with more references than
    # the list covers: once). e.g. [3, 1, 1] shows single-subject clips three times as often; a 0
    # leaves such clips out. Empty: every clip once.
    repeats_by_references: list[int] = field(default_factory=list)

    def fingerprint(self) -> str:
        """What must not change across a resume (everything but the step budget, unless a decaying
        learning-rate schedule is shaped by it, and the cadence)."""
        d = asdict(self)
        # the same steps either way (a cache encoded in batches: to float rounding, under its own key)
        for k in ("checkpoint_every", "log_every", "output_dir", "cache_encodings", "cache_part_clips", "cache_encode_batch"):
            d.pop(k)
        if d["lr_scheduler"] in ("constant", "constant_with_warmup"):  # a decaying schedule's shape is set by max_steps
            d.pop("max_steps")
        if d["cache_dtype"] == "float32":  # runs from before the key existed still resume
            d.pop("cache_dtype")
        d["repeats_by_references"] = normalised_repeats(d["repeats_by_references"])  # [1, 1, 1] and [] draw the same epochs
        if not d["repeats_by_references"]:  # as for cache_dtype
            d.pop("repeats_by_references")
        if d["data_loading"] == "random":
            d.pop("data_loading"), d.pop("shuffle_buffer")
        if d["gradient_accumulation_steps"] == 1:  # runs from before the key existed still resume
            d.pop("gradient_accumulation_steps")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_NESTED = {"lora": LoraSettings, "layout": LayoutSettings}


def _check_type(where: str, name: str, value: Any, default: Any, annotation: str):
    if value is None and "None" in annotation:
        return value
    if "float" in annotation and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML reads .inf and .nan as floats; a run on them trains NaNs
            raise MagrefInputError(f"{where}: '{name}' is {value!r}, not a finite number.", f"write e.g. {name}: {default!r}.")
        return float(value)
    if "int" in annotation and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "bool" in annotation and isinstance(value, bool):
        return value
    if "str" in annotation and isinstance(value, str):
        return value
    if "list" in annotation and isinstance(value, list):
        return value
    raise MagrefInputError(f"{where}: '{name}' should be {annotation}, got {value!r}.", f"write e.g. {name}: {default!r}.")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise MagrefInputError(f"{where} must be a mapping of keys to values.", "see configs/ for examples.")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise MagrefInputError(
                f"{where}: unknown key '{key}'.", f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(known)}."
            )
        f = known[key]
        if key in _NESTED:
            kwargs[key] = _build(_NESTED[key], value, f"{where} [{key}]")
            continue
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "...")
        kwargs[key] = _check_type(where, key, value, default, str(f.type))
    missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise MagrefInputError(f"{where}: missing required key(s) {', '.join(missing)}.", f"add {', '.join(missing)} to the file.")
    return cls(**kwargs)


def check_repeats_by_references(repeats, where: str) -> None:
    """A list of whole numbers >= 0 (whether it leaves any clip depends on the data: the trainer checks that)."""
    if not isinstance(repeats, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in repeats):
        raise MagrefInputError(f"{where}: repeats_by_references needs a list of whole numbers >= 0 (got {repeats!r}).",
                               "set repeats_by_references: [3, 1, 1] (clips with one reference three times as often), or [] for every clip once.")


def normalised_repeats(repeats: list[int]) -> list[int]:
    """The same epochs, said the shortest way: a trailing repeat of 1 is what a missing entry means."""
    repeats = list(repeats)
    while repeats and repeats[-1] == 1:
        repeats.pop()
    return repeats


def validate(cfg: TrainConfig, where: str) -> TrainConfig:
    for key, options in CHOICES.items():
        if getattr(cfg, key) not in options:
            raise MagrefInputError(f"{where}: {key} = {getattr(cfg, key)!r} is not one of {', '.join(options)}.", f"set {key}: {options[0]}.")
    if not cfg.subject_loss_weight >= 1:
        raise MagrefInputError(f"{where}: subject_loss_weight must be >= 1 (got {cfg.subject_loss_weight}).", "set subject_loss_weight: 1 (off) or e.g. 5.")
    if cfg.data_loading == "stream" and cfg.cache_layouts:
        raise MagrefInputError(f"{where}: data_loading: stream reads each sample in passing, and the encoding cache is looked up by sample.",
                               "set cache_layouts: 0 to stream, or data_loading: random to use the cache.")
    check_repeats_by_references(cfg.repeats_by_references, where)
    repeats = cfg.repeats_by_references
    if repeats and cfg.data_loading == "stream":
        raise MagrefInputError(f"{where}: repeats_by_references chooses clips by index, and data_loading: stream reads them in passing.",
                               "set data_loading: random, or repeats_by_references: [].")
    if cfg.cache_layouts < 0:
        raise MagrefInputError(f"{where}: cache_layouts must be >= 0 (got {cfg.cache_layouts}).", "set cache_layouts: 0 (off) or e.g. 2.")
    positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every", "cache_part_clips", "shuffle_buffer",
                "cache_encode_batch")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise MagrefInputError(f"{where}: {key} must be >= 1 (got {getattr(cfg, key)}).", f"set {key}: 1 or more.")
    if not cfg.learning_rate > 0:
        raise MagrefInputError(f"{where}: learning_rate must be > 0.", "set learning_rate: 1.0e-4.")
    if not 0 <= cfg.caption_dropout < 1:
        raise MagrefInputError(f"{where}: caption_dropout must be in [0, 1).", "set caption_dropout: 0.1.")
    if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
        raise MagrefInputError(f"{where}: ema_decay must be in (0, 1) or null.", "set ema_decay: 0.999.")
    if len(cfg.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.adam_betas):
        raise MagrefInputError(f"{where}: adam_betas needs two numbers in [0, 1).", "set adam_betas: [0.9, 0.999].")
    if not cfg.max_grad_norm >= 0:
        raise MagrefInputError(f"{where}: max_grad_norm must be >= 0 (got {cfg.max_grad_norm}; 0 turns clipping off).", "set max_grad_norm: 1.0.")
    for key in ("shift", "logit_std"):
        if not getattr(cfg, key) > 0:
            raise MagrefInputError(f"{where}: {key} must be > 0 (got {getattr(cfg, key)}).", f"set {key}: {getattr(TrainConfig, key)}.")
    if cfg.weight_decay < 0 or cfg.warmup_steps < 0:
        raise MagrefInputError(f"{where}: weight_decay and warmup_steps must be >= 0.", "set weight_decay: 0.0 and warmup_steps: 0.")
    for key in ("p_official_grid", "p_drop", "p_source_boxes", "p_source_order"):
        if not 0 <= getattr(cfg.layout, key) <= 1:
            raise MagrefInputError(f"{where}: layout.{key} is a probability, got {getattr(cfg.layout, key)}.", f"set layout: {{{key}: 0.3}}.")
    if not 0 < cfg.layout.min_scale <= 1:
        raise MagrefInputError(f"{where}: layout.min_scale must be in (0, 1].", "set layout: {min_scale: 0.5}.")
    if cfg.mode == "lora" and cfg.lora.rank < 1:
        raise MagrefInputError(f"{where}: lora.rank must be >= 1.", "set lora: {rank: 16}.")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise MagrefInputError(f"Config file {path} does not exist.", "pass a YAML file (see configs/).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MagrefInputError(f"{path} is not valid YAML ({str(e).splitlines()[0]}).", "fix the syntax.") from None
    data.update(overrides or {})
    return validate(_build(TrainConfig, data, str(path)), str(path))


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
