"""Speed and memory options for MagrefPipeline, all from diffusers' own machinery.

- batched CFG: conditional and unconditional passes in one forward (pipeline flag)
- attention backend: diffusers' attention dispatcher (native SDPA, flash, sage, flex, ...)
- regional torch.compile of the repeated transformer block (`compile_blocks`)
- step caches: diffusers hooks (first-block cache, TaylorSeer, MagCache with ratios calibrated
  per model and schedule on the first video that asks for it)
- low memory: group offloading with CUDA streams, VAE tiling
- multi-GPU: diffusers context parallelism (Ulysses) for the transformer and FSDP2 sharding of
  the encoders under torchrun
Presets bundle them: `quality` is the official computation (two eager passes), `fast` adds
batched CFG and regional compile, `lowmem` streams weights from host memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from .errors import MagrefInputError

from .defaults import CACHES, PRESETS  # noqa: F401 (re-exported: acceleration.PRESETS)
from .distributed import default_device
from .distributed import init_from_env as init_distributed_from_env

# Default skip thresholds: diffusers' first-block cache example value, and MagCache's for Wan.
CACHE_THRESHOLDS = {"fbcache": 0.05, "magcache": 0.06}
TAYLORSEER_INTERVAL = 2  # a full pass every 2 steps: diffusers says 5; 2 kept the trained miniature near its uncached videos (benchmarks/cache_quality.py)


def apply_preset(pipe, preset: str, device: torch.device) -> dict:
    """Configure `pipe` for `preset` on `device`; returns what was applied (for the sidecar)."""
    if preset not in PRESETS:
        raise MagrefInputError(f"Unknown preset {preset!r}.", f"use one of {', '.join(PRESETS)}.")
    opts = PRESETS[preset]
    applied = {"preset": preset, "device": str(device), "batched_cfg": opts["batched_cfg"]}
    pipe.batched_cfg = opts["batched_cfg"]
    if opts["offload"]:
        enable_lowmem(pipe, device)
        applied["offload"] = "group offloading (transformer: block level; encoders: leaf level) + VAE tiling"
    else:
        pipe.to(device)
    # Inductor on CPU compiles for minutes and gains little; compile where it pays.
    if opts["compile"] and device.type == "cuda":
        compile_blocks(pipe.transformer)
        applied["compile"] = "regional (WanTransformerBlock)"
    return applied


def compile_blocks(transformer, **compile_kwargs) -> None:
    """Regional compile: each repeated block's `forward` through torch.compile (full graph), one
    compiled graph shared by all 40 blocks since they differ only in their weights.

    Not diffusers' `compile_repeated_blocks`: it compiles each block's whole `__call__`, which
    then also traces the step-cache hooks that diffusers puts around `forward`; those are marked
    compiler-disabled, so a full graph fails and a partial one runs the blocks eagerly. Compiling
    `forward` itself leaves the hooks outside, around the compiled code."""
    for block in transformer.modules():
        if type(block).__name__ in (transformer._repeated_blocks or ()):
            block.forward = torch.compile(block.forward, fullgraph=True, **compile_kwargs)


FP8_MODES = ("weights", "compute")


def enable_fp8(pipe, mode: str = "weights", device: torch.device | None = None) -> dict:
    """Float8 (e4m3) transformer linears through torchao.

    weights: weights stored in fp8 with per-row scales, activations in the model's dtype; halves
    the weight memory of bf16, runs anywhere, computes no faster.
    compute: activations quantised per row on the fly and the matmuls run in fp8 (twice bf16's
    tensor-core rate on Hopper/Ada); only the transformer blocks' linears, where the time is (the
    condition embedders stay in float32). Needs a CUDA GPU of compute capability 8.9 or newer."""
    if mode not in FP8_MODES:
        raise MagrefInputError(f"Unknown fp8 mode {mode!r}.", f"use one of {', '.join(FP8_MODES)}.")
    try:
        from torchao.quantization import quantize_
    except ImportError:
        raise MagrefInputError("fp8 needs torchao, which is not installed.", "pip install 'magref[fp8]' (or torchao).") from None
    before = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    if mode == "weights":
        from torchao.quantization import Float8WeightOnlyConfig

        quantize_(pipe.transformer, Float8WeightOnlyConfig())
        return {"fp8": "weights", "fp8_weights": "torchao Float8WeightOnly (transformer linears)", "transformer_weight_bytes_before": before}
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise MagrefInputError(f"fp8 compute needs fp8 matmuls, which {where} does not have.",
                               "run on a GPU of compute capability 8.9+ (H100, H200, L40S, RTX 4090), or use --fp8 weights.")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    def in_block_linear(module, name):
        return isinstance(module, torch.nn.Linear) and name.startswith("blocks.")

    quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_block_linear)
    return {"fp8": "compute", "fp8_compute": "torchao Float8DynamicActivationFloat8Weight, per-row scales (transformer block linears)",
            "transformer_weight_bytes_before": before}


def enable_lowmem(pipe, onload_device: torch.device) -> None:
    """Keep weights in host memory and stream them to `onload_device` as they are needed: the
    transformer block by block (CUDA streams overlap the copies with compute), the encoders
    layer by layer; the VAE decodes in tiles."""
    from diffusers.hooks import apply_group_offloading

    offload = torch.device("cpu")
    stream = onload_device.type == "cuda"
    pipe.transformer.enable_group_offload(
        onload_device=onload_device, offload_device=offload, offload_type="block_level", num_blocks_per_group=1, use_stream=stream
    )
    for name in ("text_encoder", "image_encoder"):
        apply_group_offloading(getattr(pipe, name), onload_device=onload_device, offload_device=offload, offload_type="leaf_level", use_stream=stream)
    pipe.vae.to(onload_device)
    pipe.vae.enable_tiling()


def cache_threshold(kind: str, given: float | None) -> float:
    """The skip threshold a cache runs with: `given`, checked, or the kind's default."""
    if given is None:
        return CACHE_THRESHOLDS[kind]
    if not 0 <= given < float("inf"):  # 0 is a threshold (skip nothing), not "unset"
        raise MagrefInputError(f"--cache-threshold {given} is not a number >= 0 (0 skips nothing; larger skips more).",
                               f"use e.g. --cache-threshold {CACHE_THRESHOLDS['fbcache']} (fbcache) or {CACHE_THRESHOLDS['magcache']} (magcache).")
    return given


def cache_interval(given: int | None) -> int:
    """TaylorSeer's steps between full passes: `given`, checked, or the default."""
    if given is None:
        return TAYLORSEER_INTERVAL
    if not isinstance(given, int) or given < 1:
        raise MagrefInputError(f"The cache interval {given} (--cache-interval) is not a whole number of steps >= 1.", "use e.g. --cache-interval 2.")
    return given


def enable_step_cache(pipe, kind: str, **params) -> dict:
    """Reuse transformer computations across denoising steps (diffusers cache hooks)."""
    if kind == "none":
        return {"cache": "none"}
    if kind == "fbcache":
        from diffusers.hooks import FirstBlockCacheConfig

        config = FirstBlockCacheConfig(threshold=cache_threshold(kind, params.get("threshold")))
    elif kind == "taylorseer":
        from diffusers.hooks import TaylorSeerCacheConfig

        # Lite mode: the whole transformer's output is extrapolated (one Taylor series at
        # `proj_out`) and the blocks are skipped on predicted steps. The per-module mode keeps a
        # float32 series for every attention and FFN output: 120 x 2 x 1.3 GB at 14B and 480p.
        config = TaylorSeerCacheConfig(
            cache_interval=cache_interval(params.get("cache_interval")), disable_cache_before_step=params.get("disable_cache_before_step", 3),
            max_order=params.get("max_order", 1), taylor_factors_dtype=torch.float32, use_lite_mode=True,
        )
    elif kind == "magcache":
        from diffusers.hooks import MagCacheConfig

        ratios = params.get("mag_ratios")  # None: calibrate (skip nothing, measure the ratios)
        config = MagCacheConfig(threshold=cache_threshold(kind, params.get("threshold")), max_skip_steps=params.get("max_skip_steps", 3),
                                retention_ratio=params.get("retention_ratio", 0.2), num_inference_steps=params["num_inference_steps"],
                                mag_ratios=ratios, calibrate=ratios is None)
    else:
        raise MagrefInputError(f"Unknown step cache {kind!r}.", f"use one of {', '.join(CACHES)}.")
    pipe.transformer.enable_cache(config)
    return {"cache": kind, **{k: v for k, v in vars(config).items() if isinstance(v, (int, float, str)) or v is None}}


def mag_ratios_path(fingerprint: str, steps: int, shift: float, solver: str) -> Path:
    """Where the MagCache ratios of a model and schedule live: they depend on the weights and
    the timesteps, not on the prompt or the references."""
    root = Path(os.environ.get("MAGREF_CACHE_DIR", "~/.cache/magref")).expanduser()
    return root / "magcache" / f"{fingerprint[:16]}-{solver}-{steps}steps-shift{shift:g}.json"


class _RatioRecorder(logging.Handler):
    # diffusers' MagCache hook reports calibrated ratios only through its logger (and a print), once
    # per cache context (cond, uncond) at the end of the loop; this is the supported way to read them.
    def __init__(self):
        super().__init__(logging.INFO)
        self.runs: list[list[float]] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("MagCache Calibration Results:"):
            self.runs.append(json.loads(msg.split(":", 1)[1]))


@contextmanager
def mag_cache(pipe, fingerprint: str, steps: int, shift: float, solver: str, threshold: float | None = None):
    """MagCache for one video. The first video of a (model, steps, shift, solver) calibrates: it
    skips nothing, so it is the uncached video, and its magnitude ratios (mean over the CFG
    branches) are saved; later videos reuse them and skip steps. Yields what was done, for the sidecar."""
    threshold = cache_threshold("magcache", threshold)
    path = mag_ratios_path(fingerprint, steps, shift, solver)
    ratios = json.loads(path.read_text())["mag_ratios"] if path.is_file() else None
    info = {"cache": "magcache", "threshold": threshold, "ratios": str(path), "calibrating": ratios is None}
    enable_step_cache(pipe, "magcache", num_inference_steps=steps, mag_ratios=ratios, threshold=threshold)
    logger, recorder = logging.getLogger("diffusers.hooks.mag_cache"), _RatioRecorder()
    level, propagate = logger.level, logger.propagate
    if ratios is None:  # recorded and saved; not printed
        logger.addHandler(recorder)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()) if ratios is None else contextlib.nullcontext():
            yield info
    finally:
        disable_step_cache(pipe)
        logger.removeHandler(recorder)
        logger.setLevel(level)
        logger.propagate = propagate
    if ratios is None:
        if not recorder.runs or any(len(r) != steps for r in recorder.runs):
            raise RuntimeError(f"MagCache calibration recorded {[len(r) for r in recorder.runs]} ratios, expected {steps} per branch.")
        mean = [sum(v) / len(v) for v in zip(*recorder.runs)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mag_ratios": mean, "branches": len(recorder.runs), "steps": steps, "shift": shift, "solver": solver}))
        tmp.replace(path)


def disable_step_cache(pipe) -> None:
    if getattr(pipe.transformer, "is_cache_enabled", False):
        pipe.transformer.disable_cache()


# Attention kernels installed as wheels that diffusers' dispatcher knows only as Hub downloads:
# our name -> (its backend, module, function, how to install). FlashAttention 4 (CuTe DSL; the
# Hopper and Blackwell kernels are compiled at run time by nvidia-cutlass-dsl) is diffusers'
# `flash_4_hub`, which fetches the kernel through the `kernels` package at run time; `flash4`
# gives that backend the installed wheel's function instead: nothing is downloaded.
LOCAL_KERNELS = {"flash4": ("flash_4_hub", "flash_attn.cute", "flash_attn_func", "pip install flash-attn-4 (needs a Hopper or Blackwell GPU)")}


def _route_to_local_kernel(pipe, name: str) -> str:
    """Point the transformer's attention at an installed kernel (`LOCAL_KERNELS`); returns the
    dispatcher's backend name. As diffusers' `ModelMixin.set_attention_backend`, without its
    check for the `kernels` package and its Hub download, which an installed wheel needs neither of."""
    import importlib

    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName, _AttentionBackendRegistry

    backend_name, module, attr, install = LOCAL_KERNELS[name]
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise MagrefInputError(f"Attention backend {name!r} needs {module}.{attr}, which is not installed ({e}).",
                               f"{install}, or leave --attention out.") from None
    backend = AttentionBackendName(backend_name)
    _HUB_KERNELS_REGISTRY[backend].kernel_fn = fn
    for module_ in pipe.transformer.modules():
        processor = getattr(module_, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
    _AttentionBackendRegistry.set_active_backend(backend)
    return backend_name


def set_attention_backend(pipe, backend: str | None, device: torch.device | None = None) -> None:
    """Route the transformer's attention through `backend` of diffusers' dispatcher, and try it
    once on a small input of the transformer's dtype on `device`: a backend that cannot run there
    (cuDNN's wants CUDA and half precision) fails here with a clear message, not mid-video."""
    if not backend:
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, dispatch_attention_fn

    dtype = pipe.transformer.dtype
    device = device or pipe.transformer.device
    # diffusers also makes the backend the process-wide default; a refused one must not linger there
    previous, _ = _AttentionBackendRegistry.get_active_backend()
    try:
        if backend in LOCAL_KERNELS:
            dispatcher_name = _route_to_local_kernel(pipe, backend)
        else:
            pipe.transformer.set_attention_backend(backend)
            dispatcher_name = backend
        cfg = pipe.transformer.config  # the model's own head shape: some kernels support only some
        q = torch.zeros(1, 16, cfg.num_attention_heads, cfg.attention_head_dim, device=device, dtype=dtype)  # (B, L, heads, dim)
        dispatch_attention_fn(q, q, q, backend=dispatcher_name)
    except MagrefInputError:
        pipe.transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(previous)
        raise
    except Exception as e:
        pipe.transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(previous)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MagrefInputError(f"Attention backend {backend!r} does not run on {device} in {dtype} ({reason}).",
                               "use 'native' (or leave --attention out), or install the backend's package and use a device it supports.") from None


@contextmanager
def _accelerator_count_at_least_one():
    # diffusers computes `rank % torch.accelerator.device_count()` to pick a device, which divides
    # by zero on a CPU-only machine; with gloo the device is the CPU whatever the count says.
    if torch.accelerator.device_count() > 0:
        yield
    else:
        with mock.patch.object(torch.accelerator, "device_count", lambda: 1):
            yield


def enable_context_parallel(pipe, ulysses_degree: int | None = None) -> int:
    """Split the transformer's sequence across the processes of torch.distributed (Ulysses
    attention: all-to-all over heads). Every rank runs the same loop and ends with the same
    latents. Returns the degree."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    if not dist.is_initialized():
        raise MagrefInputError("Context parallelism needs several processes.", "launch with torchrun --nproc_per_node N -m magref.cli ...")
    degree = ulysses_degree or dist.get_world_size()
    heads = pipe.transformer.config.num_attention_heads
    if heads % degree:
        raise MagrefInputError(f"{heads} attention heads do not split over {degree} processes.", f"use a process count that divides {heads}.")
    pipe.transformer.set_attention_backend("native")
    with _accelerator_count_at_least_one():
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
    return degree


def shard_encoders(pipe) -> dict:
    """FSDP2 over the processes of torch.distributed for the text and image encoders: each rank
    keeps 1/N of their weights (UMT5-XXL is ~11 GB in bf16) and gathers one layer at a time when
    the prompt and canvas are encoded. Every rank encodes the same inputs, so the output is the
    unsharded one. Units are the layers transformers marks as unsplittable (`_no_split_modules`):
    ~80 % of UMT5-XXL's weights and nearly all of CLIP's. The rest stays replicated: the root is
    not wrapped because fully_shard swaps the model's class, and transformers finds its
    hidden-state hooks (CLIP's penultimate layer) by class; UMT5's word embedding is tied between
    two modules, so sharding one would leave the other's full copy."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise MagrefInputError("Sharding the encoders needs several processes.", "launch with torchrun --nproc_per_node N -m magref.cli ...")
    device = next(pipe.text_encoder.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    done = {}
    for name in ("text_encoder", "image_encoder"):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        units = set(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if type(m).__name__ in units]
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        done[name] = f"FSDP2 over {dist.get_world_size()} ranks, {len(layers)} layer units"
    return done


# ----------------------------------------------------------------------------------------------
# One model's whole set-up, as `generate`, `batch` and the app ask for it
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AccelerationOptions:
    preset: str = "quality"
    cache: str = "none"
    cache_threshold: float | None = None  # default: CACHE_THRESHOLDS
    cache_interval: int | None = None  # TaylorSeer; default: TAYLORSEER_INTERVAL
    attention: str | None = None  # diffusers' dispatcher backend; None: its default
    device: str | None = None  # default: cuda when available
    fp8: str | None = None  # "weights" or "compute"
    # under torchrun: split each video over the processes (Ulysses); False: each process runs whole
    # videos of its own (a batch's item-parallel mode), so the group is not used by the model
    context_parallel: bool = True

    def output_key(self) -> dict:
        """The options that change the video itself (a step cache, fp8), for a batch's
        request fingerprints; the others (preset, attention, device) change its speed."""
        key = {}
        if self.cache != "none":
            key.update(cache=self.cache, cache_threshold=self.cache_threshold, cache_interval=self.cache_interval)
        if self.fp8:
            key["fp8"] = self.fp8
        return key

    def check_requests(self, requests) -> None:
        """What is refused before the model loads: values no run could use (a cache interval of 0,
        a negative threshold, an attention backend or device that does not exist), and
        combinations: a step cache compares one forward with the previous one of its branch, and
        context windows make several forwards per step. Whether a backend runs on this device is
        tried once the model is there (`set_attention_backend`)."""
        cache_interval(self.cache_interval)  # the checks the cache runs with, here before the load
        if self.cache_threshold is not None:
            cache_threshold(self.cache, self.cache_threshold)
        if self.attention:
            from diffusers.models.attention_dispatch import AttentionBackendName

            known = {b.value for b in AttentionBackendName} | set(LOCAL_KERNELS)
            if self.attention not in known:
                public = ", ".join(sorted(n for n in known if not n.startswith("_")))
                raise MagrefInputError(f"Unknown attention backend {self.attention!r}.",
                                       f"use one of {public} (or diffusers' underscored variants, e.g. _native_cudnn); leave --attention out for the default.")
        self.resolve_device()
        if self.cache != "none" and any(getattr(r, "context_windows", None) is not None for r in requests):
            raise MagrefInputError(f"--cache {self.cache} does not combine with context windows (a video longer than the model's trained length).",
                                   "leave out --cache, or generate in one pass with --context-frames 0.")

    def resolve_device(self) -> torch.device:
        if self.device:
            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise MagrefInputError(f"Unknown device {self.device!r}.", "use --device cpu or --device cuda (cuda:N for one GPU of several).") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise MagrefInputError(f"--device {self.device} was asked for, but this machine has no CUDA GPU that torch can use.",
                                       "leave --device out (cuda when available, else cpu) or pass --device cpu.")
            return device
        return default_device()


def accelerate(pipe, options: AccelerationOptions) -> tuple[int, dict]:
    """Apply a preset, fp8, the attention backend and a step cache, and context parallelism under
    torchrun; returns (rank, what was applied, for the sidecar). MagCache is set up per job
    (`job_step_cache`): its ratios depend on the job's steps and shift."""
    rank, world = init_distributed_from_env()
    device = options.resolve_device()
    fp8 = enable_fp8(pipe, options.fp8, device) if options.fp8 else {}
    applied = {**apply_preset(pipe, options.preset, device), **fp8}
    set_attention_backend(pipe, options.attention, device)
    applied["attention"] = options.attention or "default"
    if options.cache == "magcache":
        applied.update(cache="magcache", cache_threshold=cache_threshold("magcache", options.cache_threshold))
    else:
        applied.update(enable_step_cache(pipe, options.cache, threshold=options.cache_threshold, cache_interval=options.cache_interval))
    if world > 1 and not options.context_parallel:
        applied["item_parallel"] = {"rank": rank, "world_size": world}
    elif world > 1:
        applied["context_parallel"] = {"ulysses_degree": enable_context_parallel(pipe), "world_size": world}
        if not PRESETS[options.preset]["offload"]:  # lowmem streams the encoders from host memory instead
            applied["sharded_encoders"] = shard_encoders(pipe)
    return rank, applied


def job_step_cache(pipe, applied: dict, fingerprint: str, steps: int, shift: float, solver: str):
    """The step cache of one job: MagCache's, calibrated or loaded for this model and schedule,
    when `accelerate` deferred it; else nothing (the other caches live on the transformer)."""
    if applied.get("cache") == "magcache":
        return mag_cache(pipe, fingerprint, steps, shift, solver, applied.get("cache_threshold"))
    return contextlib.nullcontext({})
