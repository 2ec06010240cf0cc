"""Denoising speed and memory per preset, against the official-style eager two-pass baseline.

Builds the transformer with random weights directly on the device (no checkpoint needed): the
real 14B I2V config on a GPU, a scaled config on a CPU. Everything is measured in this one run,
so the ratios compare like with like.

    python benchmarks/speed.py                      # GPU: 14B at 480x832x81; CPU: scaled model
    python benchmarks/speed.py --steps 40 --video   # also time whole denoising loops with caches
    python benchmarks/speed.py --only fast,fp8 --whole   # GPU: eager, fast, fast + fp8 compute, one whole video
    python benchmarks/speed.py --only fp8 --whole-caches taylorseer:3   # GPU: ... and a whole video with a step cache

Rows: one denoising step (two guidance branches) per preset: `eager two-pass` (the official
computation), `batched CFG`, `batched CFG + regional compile` (GPU), the same with fp8 matmuls
(GPU, torchao), `lowmem` (group offloading); then step caches over a whole loop, with their output
difference against the uncached loop.
"""

from __future__ import annotations

import argparse
import resource
import time
from contextlib import contextmanager

import torch

GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
ROWS = "batched,cudnn,flash4,lowmem,fast,fp8,components"


def transformer_config(scaled: bool) -> dict:
    if not scaled:  # the real Wan2.1-I2V-14B / MAGREF transformer
        return dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096, image_dim=1280, added_kv_proj_dim=5120)
    return dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=4, text_dim=256, image_dim=128, added_kv_proj_dim=256)


def setting(device):
    """What runs where: the real 14B at 480x832x81 in bf16 on a GPU, a scaled model on a small
    video in float32 on a CPU. (dtype, config, (frames, height, width), device name, its bf16 peak
    TFLOP/s or None)."""
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    peak = next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None) if gpu else None
    size = (81, 480, 832) if gpu else (17, 128, 224)
    return (torch.bfloat16 if gpu else torch.float32), transformer_config(scaled=not gpu), size, name, peak


@contextmanager
def default_dtype(dtype):
    """Build modules in `dtype` directly (parameters are created in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(cfg: dict, device, dtype):
    from diffusers import WanTransformer3DModel
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # the fp32-module casting advice is handled below
    torch.manual_seed(0)  # every build the same weights: the rows' outputs are compared
    with default_dtype(dtype), torch.device(device):  # the 14B never exists in float32 (57 GB)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=36, out_channels=16, freq_dim=256, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **cfg,
        )
    for name, module in model.named_modules():  # diffusers keeps these in float32 for stability
        if any(k in name.split(".") for k in model._keep_in_fp32_modules or []):
            module.to(torch.float32)
    return model.eval().requires_grad_(False)


def step_flops(cfg: dict, tokens: int, text_len: int = 512, image_len: int = 257) -> float:
    """Forward FLOPs of one transformer pass (matmuls only)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    per_layer = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * cfg["ffn_dim"])  # self qkvo, cross q/o, ffn
    per_layer += 2 * (text_len + image_len) * 4 * d * d  # cross k/v on text and image tokens
    per_layer += 4 * tokens * tokens * d + 4 * tokens * (text_len + image_len) * d  # attention scores and values
    return cfg["num_layers"] * per_layer


def inputs(cfg, frames, height, width, device, dtype, batch=1):
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 36, t, h, w, generator=g).to(device, dtype)
    text = torch.randn(batch, 512, cfg["text_dim"], generator=g).to(device, dtype)
    image = torch.randn(batch, 257, cfg["image_dim"], generator=g).to(device, dtype)
    return x, text, image, t * (h // 2) * (w // 2)


def failure(e: Exception) -> str:
    """An exception as one table cell: its type and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def guided_pair(model, x, text, image, t=None):
    """One batched conditional + unconditional forward (batched CFG); the negative prompt is the
    prompt reversed. Returns both branches' outputs, stacked, in float32."""
    ts = (torch.tensor(500, device=x.device) if t is None else t).expand(2)
    with torch.no_grad(), model.cache_context("cfg"):  # the pipeline's context name for a batched step
        return model(torch.cat([x, x]), ts, torch.cat([text, text.flip(1)]), torch.cat([image, image]), return_dict=False)[0].float()


def time_step(model, x, text, image, batched: bool, device, repeats: int) -> float:
    ts = torch.tensor([500], device=device)
    neg = text.flip(1)

    def one():
        if batched:
            guided_pair(model, x, text, image)
        else:
            model(x, ts, text, image, return_dict=False)
            model(x, ts, neg, image, return_dict=False)

    with torch.no_grad():
        one()  # warm-up (and compilation)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            one()
        sync(device)
    return (time.perf_counter() - t0) / repeats


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--video", action="store_true", help="also time whole loops with step caches")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--video-steps", type=int, default=40, help="steps of the whole video that the GPU rows project to")
    ap.add_argument("--only", default=ROWS, help=f"comma list of rows beside the eager baseline (default: all of {ROWS})")
    ap.add_argument("--whole", action="store_true", help="GPU: also time one whole --video-steps loop of the last compiled row")
    ap.add_argument("--whole-caches", default="",
                    help="GPU: whole loops of the last compiled row with step caches, e.g. taylorseer:3,fbcache:0.05 (not magcache) "
                    "(taylorseer:N refreshes every N steps; fbcache:T is its threshold)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype, cfg, (frames, height, width), name, peak = setting(device)

    model = build(cfg, device, dtype)
    x, text, image, tokens = inputs(cfg, frames, height, width, device, dtype)
    flops = 2 * step_flops(cfg, tokens)  # two guidance branches per step
    params = sum(p.numel() for p in model.parameters()) / 1e9
    import diffusers

    print(f"\ndevice: {name}; torch {torch.__version__}, diffusers {diffusers.__version__}; transformer "
          f"{'real 14B' if gpu else 'scaled'} config, {params:.2f} B params, {dtype}; video {width}x{height}x{frames} -> "
          f"{tokens} tokens; {flops / 1e12:.2f} TFLOP per denoising step\n")
    print("| variant | s / step | vs eager two-pass | TFLOP/s | MFU | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    base = None
    measured = {}

    def row(label, batched, m=None, note=""):
        """One table row; a failure becomes the row's text, so one broken variant costs one row."""
        nonlocal base
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds = time_step(m or model, x, text, image, batched, device, args.repeats)
        except Exception as e:  # noqa: BLE001 - reported in the table, the next rows still run
            print(f"| {label} | failed: {failure(e)} | | | | |")
            return None
        base = base or seconds
        measured[label] = seconds
        tflops = flops / seconds / 1e12
        mfu = f"{tflops / peak:.1%}" if peak else "n/a (CPU)"
        print(f"| {label}{note} | {seconds:.3f} | {base / seconds:.2f}x | {tflops:.3f} | {mfu} | {peak_memory_gib(device):.2f} |")
        return seconds

    row("eager two-pass (official)", False)
    if gpu:  # the reference output for the rows that change the arithmetic (compile, fp8)
        reference = guided_pair(model, x, text, image)
        differences = {}
    if "batched" in only:
        row("batched CFG", True)
    backend = "native"
    if gpu and "cudnn" in only:  # diffusers' attention dispatcher: cuDNN's fused attention against SDPA's default choice
        try:
            model.set_attention_backend("_native_cudnn")
            if (row("batched CFG, cuDNN attention", True) or 1e9) < measured.get("batched CFG", 0):
                backend = "_native_cudnn"
        except Exception as e:  # noqa: BLE001
            print(f"| batched CFG, cuDNN attention | failed: {failure(e)} | | | | |")
        model.set_attention_backend("native")
    if gpu and "flash4" in only:  # FlashAttention 4 from its wheel (`--attention flash4`), same batched CFG step
        try:
            from types import SimpleNamespace

            from magref import acceleration as acc

            acc._route_to_local_kernel(SimpleNamespace(transformer=model), "flash4")
            row("batched CFG, flash4 attention", True)
        except Exception as e:  # noqa: BLE001
            print(f"| batched CFG, flash4 attention | failed: {failure(e)} | | | | |")
        model.set_attention_backend("native")
    if "lowmem" in only:  # weights in host memory, streamed block by block (CUDA streams overlap copies and compute)
        lowmem = model.to("cpu") if gpu else build(cfg, "cpu", dtype)
        lowmem.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                                    num_blocks_per_group=1, use_stream=gpu)
        row("lowmem (group offloading, block level, two-pass)", False, lowmem)
        del lowmem
    if gpu:
        from magref import acceleration as acc

        del model
        compiled = None
        for label, fp8 in (("batched CFG + regional compile", False), ("batched CFG + regional compile + fp8 compute", True)):
            if ("fp8" if fp8 else "fast") not in only:
                continue
            if compiled and torch.cuda.mem_get_info()[0] < 80 * 2**30:  # room for a second 14B copy? (H200: yes)
                compiled = None
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            try:
                model = build(cfg, device, dtype)  # a fresh one: earlier rows leave hooks and backends behind
                model.set_attention_backend(backend)
                if fp8:
                    class P:  # the one attribute enable_fp8 needs
                        transformer = model

                    acc.enable_fp8(P, "compute", device)
                acc.compile_blocks(model)  # the fast preset's regional compile
            except Exception as e:  # noqa: BLE001
                print(f"| {label} | failed: {failure(e)} | | | | |")
                continue
            if row(label, True, model, note=f" ({backend} attention)"):
                compile_s = time.perf_counter() - t0 - (args.repeats + 1) * measured[label]  # the row ran a warm-up and `repeats` steps
                out = guided_pair(model, x, text, image)
                diff = (out - reference).abs().max().item()
                differences[label] = (compile_s, diff, diff / reference.abs().max().item())
                compiled = (label, model)
            del model
        print("| 8 GPUs, Ulysses context parallel | not measured here: torchrun --nproc_per_node 8 benchmarks/context_parallel.py | | | | |")
        if differences:
            print("\n| compiled row | set-up and compilation (s, once per process) | max abs diff vs eager bf16 (one step, both branches) | relative |")
            print("|---|---|---|---|")
            for label, (compile_s, diff, rel) in differences.items():
                print(f"| {label} | {compile_s:.0f} | {diff:.3e} | {rel:.3e} |")
        print(f"\nwhole {args.video_steps}-step video, projected as s/step x steps (transformer only, no step cache):")
        for label, seconds in measured.items():
            print(f"- {label}: {seconds * args.video_steps:.0f} s")
        uncached = None
        if args.whole and compiled:
            label, model = compiled
            uncached = denoise(model, x, text, image, device, args.video_steps, batched=True)
            seconds = uncached[1]
            print(f"\nwhole {args.video_steps}-step video timed as one loop (UniPC, transformer + scheduler), {label}: "
                  f"{seconds:.0f} s ({seconds / args.video_steps:.3f} s/step; projected {measured[label] * args.video_steps:.0f} s)")
        if args.whole_caches and compiled:
            label, model = compiled
            whole_cache_rows(model, x, text, image, device, args.video_steps, args.whole_caches, measured[label], uncached)
        compiled = model = None
        if "components" in only:
            lowmem_components(device, frames, height, width)
    else:
        print("| batched CFG + regional compile | not measured (CPU) | | | | |")
    if args.video:  # uncompiled: the loop runs batch-1 passes
        video_rows(build(cfg, device, dtype) if gpu else model, cfg, x, text, image, device, args.steps)


def lowmem_components(device, frames, height, width, text_len=512):
    """The rest of the lowmem preset at full size: the Wan2.1 VAE decoding the whole video in
    tiles, and UMT5-XXL streamed layer by layer (leaf-level group offloading) for one prompt."""
    from diffusers import AutoencoderKLWan
    from diffusers.hooks import apply_group_offloading

    print("\n| lowmem component (random weights, full size) | seconds | peak GPU memory (GiB) |")
    print("|---|---|---|")
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        vae = AutoencoderKLWan().to(device, torch.bfloat16).eval()  # diffusers' defaults are Wan2.1's VAE
        vae.enable_tiling()
        z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            sync(device)
            t0 = time.perf_counter()
            vae.decode(z, return_dict=False)
            sync(device)
        print(f"| VAE decode {width}x{height}x{frames}, tiled | {time.perf_counter() - t0:.1f} | {peak_memory_gib(device):.2f} |")
        del vae
    except Exception as e:  # noqa: BLE001
        print(f"| VAE decode, tiled | failed: {failure(e)} | |")
    try:
        from transformers import UMT5Config, UMT5EncoderModel

        cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
        with default_dtype(torch.bfloat16), torch.device("meta"):
            enc = UMT5EncoderModel(cfg)
        enc = enc.to_empty(device="cpu").eval()
        for p_ in enc.parameters():  # zeros: the values change neither memory nor time
            p_.data.zero_()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        apply_group_offloading(enc, onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level", use_stream=device.type == "cuda")
        ids = torch.randint(0, 256384, (1, text_len), device=device)
        with torch.no_grad():
            enc(ids)  # warm-up: pins and schedules the streams
            sync(device)
            t0 = time.perf_counter()
            enc(ids)
            sync(device)
        print(f"| UMT5-XXL encode {text_len} tokens, leaf-level offload | {time.perf_counter() - t0:.1f} | {peak_memory_gib(device):.2f} |")
    except Exception as e:  # noqa: BLE001
        print(f"| UMT5-XXL encode, leaf-level offload | failed: {failure(e)} | |")


def denoise(model, x, text, image, device, steps, batched=False):
    """A whole denoising loop (UniPC, official sigmas, guidance 5): the final latent and its seconds."""
    from magref.schedulers import make_scheduler

    s = make_scheduler("unipc", 3.0)
    s.set_timesteps(steps, device=device)
    lat = x[:, :16].float().clone()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in s.timesteps:
            inp = torch.cat([lat, x[:, 16:].float()], 1).to(x.dtype)
            if batched:  # one forward for both branches, as the fast preset runs
                c, u = guided_pair(model, inp, text, image, t).chunk(2)
            else:
                with model.cache_context("cond"):
                    c = model(inp, t.expand(1), text, image, return_dict=False)[0].float()
                with model.cache_context("uncond"):
                    u = model(inp, t.expand(1), text.flip(1), image, return_dict=False)[0].float()
            lat = s.step(u + 5.0 * (c - u), t, lat, return_dict=False)[0]
    sync(device)
    return lat, time.perf_counter() - t0


def whole_cache_rows(model, x, text, image, device, steps, spec, step_seconds, uncached=None):
    """Whole batched-CFG loops of `model` (compiled or not) with step caches. TaylorSeer refreshes
    on a fixed schedule, so its time here is what trained weights would take; fbcache decides from
    the outputs, which on random weights say nothing of a trained model's. `uncached`: the timed
    uncached loop (latent, seconds) of this run, else the ratio is to `step_seconds` x steps."""
    from magref import acceleration as acc

    class P:  # the one attribute enable_step_cache needs
        transformer = model

    passes, block = {"n": 0}, model.blocks[-1]
    inner = block.forward

    def counted(*a, **k):  # a full pass reaches the last block; a skipped step does not
        passes["n"] += 1
        return inner(*a, **k)

    block.forward = counted
    base, base_label = (uncached[1], "timed") if uncached else (step_seconds * steps, "projected from s/step")
    print(f"\n| whole {steps}-step loop, step cache | seconds | full passes | vs uncached ({base_label}: {base:.0f} s) | max abs diff vs uncached | relative |")
    print("|---|---|---|---|---|---|")
    for item in spec.split(","):
        kind, _, value = item.partition(":")
        passes["n"] = 0
        if kind == "magcache":  # its calibration is an uncached loop, and random weights' ratios say nothing
            print(f"| {item} | not run: MagCache's ratios come from a calibrating loop of the trained model (`--video` times it on CPU) | | | | |")
            continue
        try:
            if kind == "taylorseer":
                params = {"cache_interval": int(value or acc.TAYLORSEER_INTERVAL)}
            else:
                params = {"threshold": acc.cache_threshold(kind, float(value) if value else None)}
            acc.enable_step_cache(P, kind, **params)
            latent, seconds = denoise(model, x, text, image, device, steps, batched=True)
        except Exception as e:  # noqa: BLE001 - one row
            print(f"| {item} | failed: {failure(e)} | | | | |")
            continue
        finally:
            acc.disable_step_cache(P)
        diff = rel = ""
        if uncached:
            d = (latent - uncached[0]).abs().max().item()
            diff, rel = f"{d:.3e}", f"{d / uncached[0].abs().max().item():.3e}"
        print(f"| {kind} {params} | {seconds:.1f} | {passes['n']} of {steps} | {base / seconds:.2f}x | {diff} | {rel} |", flush=True)
    block.forward = inner


def video_rows(model, cfg, x, text, image, device, steps):
    """Whole denoising loops (UniPC, official sigmas) with and without step caches."""
    from magref import acceleration as acc

    class P:  # the one attribute enable_step_cache needs
        transformer = model

    def loop():
        return denoise(model, x, text, image, device, steps)

    ref, base = loop()
    print(f"\n| whole loop, {steps} steps | seconds | speed-up | max abs diff vs uncached | relative |")
    print("|---|---|---|---|---|")
    print(f"| no cache | {base:.2f} | 1.00x | 0 | 0 |")
    for kind, params in (("fbcache", {"threshold": 0.05}), ("fbcache", {"threshold": 0.2}), ("taylorseer", {"cache_interval": 2})):
        acc.enable_step_cache(P, kind, **params)
        out, seconds = loop()
        acc.disable_step_cache(P)
        diff = (out - ref).abs().max().item()
        print(f"| {kind} {params or ''} | {seconds:.2f} | {base / seconds:.2f}x | {diff:.3e} | {diff / ref.abs().max().item():.3e} |")
    # MagCache: one calibrating loop (skips nothing), then the timed loop with its ratios
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAGREF_CACHE_DIR"] = tmp
        with acc.mag_cache(P, "benchmark", steps, 3.0, "unipc"):
            loop()
        for threshold in (0.06, 0.12):
            with acc.mag_cache(P, "benchmark", steps, 3.0, "unipc", threshold=threshold):
                out, seconds = loop()
            diff = (out - ref).abs().max().item()
            print(f"| magcache {{'threshold': {threshold}}} | {seconds:.2f} | {base / seconds:.2f}x | {diff:.3e} | {diff / ref.abs().max().item():.3e} |")


if __name__ == "__main__":
    main()
