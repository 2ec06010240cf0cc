"""Self-attention kernels at the 14B transformer's shape, one call each, measured in one run.

At 480x832x81 the transformer's self-attention over 32760 tokens is about half of a denoising
step's FLOP, so the attention kernel decides how far below the eager step a preset can go.
This times each kernel the pipeline can route attention through (diffusers' dispatcher names,
as `--attention NAME` takes them), plus kernels installed outside it, on the same inputs:

    python benchmarks/attention.py            # GPU: (2, 32760, 40, 128) bf16; CPU: a scaled shape

Columns: median milliseconds per call, TFLOP/s (4 * B * H * L^2 * D per call), speed against
diffusers' default (`native`, SDPA's own choice) and the relative error ||out - ref|| / ||ref||
against float32 attention on the first two heads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def shape(device: str) -> tuple[int, int, int, int]:
    # (batch, tokens, heads, head dim): both guidance branches of the real 14B at 480x832x81
    return (2, 32760, 40, 128) if device == "cuda" else (1, 2048, 4, 64)


def timed(fn, device: str, repeats: int) -> float:
    fn(), fn()  # warm-up: compilation, autotuning, handles
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def candidates(device: str) -> dict:
    """name -> fn(q, k, v) with q, k, v in (B, L, H, D), the layout diffusers passes."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements, dispatch_attention_fn

    names = ["native", "_native_flash", "_native_cudnn", "_native_efficient", "flash", "_flash_3", "sage"]
    if device != "cuda":
        names = ["native", "_native_math"]
    def through_dispatcher(name):
        def fn(q, k, v):
            _check_attention_backend_requirements(AttentionBackendName(name))  # names the missing package
            return dispatch_attention_fn(q, k, v, backend=name)
        return fn

    out = {f"diffusers `{n}`": through_dispatcher(n) for n in names}

    # Outside diffusers' dispatcher: compiled flex attention (Triton), and SageAttention 1.x
    # (Triton; diffusers' `sage` wants the CUDA builds of 2.1.1+, which have no wheels).
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    out["flex_attention, compiled"] = lambda q, k, v: flex(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    if device == "cuda":  # FlashAttention 4 from the flash-attn-4 wheel (`--attention flash4`); a missing wheel is a row saying so
        def flash4(q, k, v):
            from flash_attn.cute import flash_attn_func

            out = flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out

        out["flash-attn-4 (CuTe DSL, `--attention flash4`)"] = flash4
    try:
        from sageattention import sageattn

        out["sageattention 1.x (Triton, int8 QK)"] = lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    b, length, heads, dim = shape(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, length, heads, dim, generator=g).to(device, dtype) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t[:1, :, :2].transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
    flop = 4 * b * heads * length * length * dim
    if device == "cuda":
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print(f"# q, k, v: {(b, length, heads, dim)} {dtype}; {flop / 1e12:.2f} TFLOP per call\n")
    print("| kernel | ms / call | TFLOP/s | vs `native` | rel. error vs float32 |")
    print("|---|---|---|---|---|")
    base = None
    for name, fn in candidates(device).items():
        try:
            out = fn(q, k, v)
            err = ((out[:1, :, :2].float() - ref).norm() / ref.norm()).item()
            ms = timed(lambda: fn(q, k, v), device, args.repeats)
        except Exception as e:  # a kernel not installed or not supported here is a row, not a crash
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:110]
            print(f"| {name} | not run: {reason} | | | |")
            continue
        base = base or (ms if name == "diffusers `native`" else None)
        ratio = f"{base / ms:.2f}x" if base else ""
        print(f"| {name} | {ms:.1f} | {flop / ms / 1e9:.1f} | {ratio} | {err:.2e} |", flush=True)


if __name__ == "__main__":
    main()
