"""Speed/memory options on CPU: batched CFG equals two passes, caches run and their difference is
reported, offload paths run, context parallelism over 2 gloo processes reproduces 1 process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from magref import acceleration as acc
from magref.errors import MagrefInputError
from magref.tiny import tiny_random_pipeline

REFS = [Image.new("RGB", (40, 60), (200, 30, 30)), Image.new("RGB", (50, 50), (20, 200, 30))]
KW = dict(prompt="a red block and a green block", references=REFS, height=64, width=96, num_frames=9, num_inference_steps=6, output_type="latent")


def _latents(pipe, **kw):
    return pipe(**{**KW, **kw}, generator=torch.Generator().manual_seed(0)).frames


def test_batched_cfg_equals_two_passes():
    pipe = tiny_random_pipeline()
    two = _latents(pipe, batched_cfg=False)
    one = _latents(pipe, batched_cfg=True)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,params", [("fbcache", {"threshold": 0.5}), ("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 2})])
def test_step_cache_runs_and_difference_is_reported(kind, params):
    pipe = tiny_random_pipeline()
    reference = _latents(pipe)
    calls = {"n": 0}
    # cache hooks still enter a skipped module but run none of its layers: count an inner layer
    hook = pipe.transformer.blocks[-1].ffn.net[0].proj.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    _latents(pipe)
    uncached_calls = calls["n"]
    calls["n"] = 0
    info = acc.enable_step_cache(pipe, kind, **params)
    cached = _latents(pipe)
    acc.disable_step_cache(pipe)
    hook.remove()
    assert info["cache"] == kind
    diff = (cached - reference).abs().max().item()
    rel = diff / reference.abs().max().item()
    print(f"{kind}: max abs diff vs uncached {diff:.3e} (relative {rel:.3e}), last-block FFN calls {calls['n']}/{uncached_calls}")
    assert torch.isfinite(cached).all()
    assert calls["n"] < uncached_calls, "the cache skipped no computation"
    assert rel < 1.0


@pytest.mark.parametrize("kind,params", [("fbcache", {"threshold": 0.5}), ("taylorseer", {"cache_interval": 2}),
                                         ("magcache", {"num_inference_steps": 6, "mag_ratios": [1.0, 1.0, 0.99, 0.99, 0.98, 0.98], "threshold": 0.5})])
def test_regional_compile_keeps_step_cache_hooks_outside_the_graph(kind, params):
    """The fast preset's regional compile with a step cache: each block's forward compiles as one
    full graph shared by all blocks (the cache hooks, compiler-disabled in diffusers, stay outside
    it), the cache still skips work, and the video equals the uncompiled cached one."""
    from torch._dynamo.utils import counters

    eager = tiny_random_pipeline()
    acc.enable_step_cache(eager, kind, **params)
    expected = _latents(eager)
    pipe = tiny_random_pipeline()
    torch._dynamo.reset()
    counters.clear()
    acc.compile_blocks(pipe.transformer, backend="eager")  # the graph capture is what is tested; Inductor is a GPU matter
    calls, block = {"n": 0}, pipe.transformer.blocks[-1]
    compiled_forward = block.forward

    def counted(*args, **kwargs):  # calls of the compiled code; the cache hooks wrap this
        calls["n"] += 1
        return compiled_forward(*args, **kwargs)

    block.forward = counted
    acc.enable_step_cache(pipe, kind, **params)
    compiled = _latents(pipe)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], (dict(counters["stats"]), dict(counters["graph_break"]))
    assert 0 < calls["n"] < 2 * KW["num_inference_steps"], calls  # both guidance branches per step, uncached
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)


def test_magcache_calibrates_on_the_first_video_then_skips(tmp_path, monkeypatch):
    """The calibrating video skips nothing (it is the uncached video, exactly); the ratios are
    saved per model and schedule; the next video reuses them and skips blocks."""
    monkeypatch.setenv("MAGREF_CACHE_DIR", str(tmp_path))
    pipe = tiny_random_pipeline()
    reference = _latents(pipe)
    calls = {"n": 0}
    hook = pipe.transformer.blocks[-1].ffn.net[0].proj.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    settings = dict(fingerprint="f" * 64, steps=KW["num_inference_steps"], shift=3.0, solver="unipc", threshold=0.5)
    with acc.mag_cache(pipe, **settings) as info:
        calibrated = _latents(pipe)
    assert info["calibrating"] and torch.equal(calibrated, reference)
    uncached_calls, calls["n"] = calls["n"], 0
    saved = json.loads(acc.mag_ratios_path("f" * 64, KW["num_inference_steps"], 3.0, "unipc").read_text())
    assert len(saved["mag_ratios"]) == KW["num_inference_steps"] and saved["branches"] == 2  # cond and uncond contexts
    assert saved["mag_ratios"][0] == 1.0 and all(r > 0 for r in saved["mag_ratios"])
    with acc.mag_cache(pipe, **settings) as info:
        cached = _latents(pipe)
    hook.remove()
    assert not info["calibrating"] and not getattr(pipe.transformer, "is_cache_enabled", False)
    rel = ((cached - reference).abs().max() / reference.abs().max()).item()
    print(f"magcache: relative max diff vs uncached {rel:.3e}, last-block FFN calls {calls['n']}/{uncached_calls}")
    assert calls["n"] < uncached_calls and torch.isfinite(cached).all() and rel < 1.0
    # another schedule has its own ratios: calibrates again
    with acc.mag_cache(pipe, **{**settings, "shift": 5.0}) as info:
        assert info["calibrating"]
        _latents(pipe, shift=5.0)


def test_attention_backend_is_tried_where_it_will_run():
    from magref.errors import MagrefInputError

    pipe = tiny_random_pipeline()
    acc.set_attention_backend(pipe, "_native_math", torch.device("cpu"))
    math = _latents(pipe)
    acc.set_attention_backend(pipe, "native", torch.device("cpu"))
    torch.testing.assert_close(math, _latents(pipe), atol=1e-5, rtol=0)
    # cuDNN's fused attention needs CUDA and half precision: refused before any video is made
    with pytest.raises(MagrefInputError, match=r"'_native_cudnn' does not run on cpu in torch.float32"):
        acc.set_attention_backend(pipe, "_native_cudnn", torch.device("cpu"))
    with pytest.raises(MagrefInputError, match="must be one of"):
        acc.set_attention_backend(pipe, "nonsense", torch.device("cpu"))
    torch.testing.assert_close(_latents(pipe), math, atol=1e-5, rtol=0)  # the refused backend did not stick


def test_flash4_refuses_without_its_wheel_and_routes_attention_through_it_when_installed(monkeypatch):
    """--attention flash4: without the flash-attn-4 wheel a clear refusal (and the default stays);
    with it (here a stand-in `flash_attn.cute` that counts its calls and computes SDPA, since the
    real kernel needs a Hopper GPU) every attention of the transformer runs through its
    flash_attn_func, with no Hub download, and the video is the native one."""
    import sys
    import types

    from magref.errors import MagrefInputError

    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    monkeypatch.setattr(_HUB_KERNELS_REGISTRY[AttentionBackendName.FLASH_4_HUB], "kernel_fn", None)  # restored afterwards
    pipe = tiny_random_pipeline()
    reference = _latents(pipe)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed, whatever this machine has
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    with pytest.raises(MagrefInputError, match="pip install flash-attn-4"):
        acc.set_attention_backend(pipe, "flash4", torch.device("cpu"))
    torch.testing.assert_close(_latents(pipe), reference, atol=1e-5, rtol=0)

    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):  # (B, L, heads, dim), as FlashAttention takes them
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale,
                                                                is_causal=causal)
        return out.transpose(1, 2), None

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    acc.set_attention_backend(pipe, "flash4", torch.device("cpu"))
    calls.clear()
    latents = _latents(pipe)
    blocks = len(pipe.transformer.blocks)
    assert len(calls) >= 2 * blocks  # self- and cross-attention of every block, every pass
    torch.testing.assert_close(latents, reference, atol=1e-5, rtol=0)
    acc.set_attention_backend(pipe, "native", torch.device("cpu"))


def test_lowmem_preset_runs_and_matches():
    """lowmem is really on: group-offload hooks on every transformer block and on the encoders'
    layers, VAE tiling on; and the video is the same."""
    from diffusers.hooks import HookRegistry

    def offloaded(module):
        registry = getattr(module, "_diffusers_hook", None)
        return isinstance(registry, HookRegistry) and any("group_offloading" in name for name in registry.hooks)

    reference = _latents(tiny_random_pipeline())
    pipe = tiny_random_pipeline()
    assert not offloaded(pipe.transformer.blocks[0]) and not pipe.vae.use_tiling
    applied = acc.apply_preset(pipe, "lowmem", torch.device("cpu"))
    assert "group offloading" in applied["offload"]
    assert all(offloaded(block) for block in pipe.transformer.blocks)
    for encoder in (pipe.text_encoder, pipe.image_encoder):
        leaves = [m for m in encoder.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
        assert leaves and all(offloaded(m) for m in leaves)
    assert pipe.vae.use_tiling
    torch.testing.assert_close(_latents(pipe), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,params", [("fbcache", {"threshold": 0.0}), ("taylorseer", {"cache_interval": 1}),
                                         ("magcache", {"num_inference_steps": 6, "mag_ratios": [0.95] * 6, "threshold": 0.0})])
def test_step_cache_that_skips_nothing_is_the_uncached_video_exactly(kind, params):
    """Threshold 0 (interval 1) computes every step: the hooks must then change nothing at all.
    (MagCache's ratios here are below 1: with ratios of exactly 1 its accumulated error is 0,
    which a threshold of 0 still allows to skip.)"""
    pipe = tiny_random_pipeline()
    reference = _latents(pipe)
    acc.enable_step_cache(pipe, kind, **params)
    cached = _latents(pipe)
    acc.disable_step_cache(pipe)
    assert torch.equal(cached, reference)


def test_fp8_weights_run_and_difference_is_reported():
    reference = _latents(tiny_random_pipeline())
    pipe = tiny_random_pipeline()
    info = acc.enable_fp8(pipe)  # weights, the default mode
    assert "Float8" in type(pipe.transformer.blocks[0].ffn.net[2].weight).__name__
    out = _latents(pipe)
    rel = ((out - reference).abs().max() / reference.abs().max()).item()
    print(f"fp8 weights: relative max difference vs float32 {rel:.3e}")
    assert info["fp8"] == "weights" and torch.isfinite(out).all() and rel < 0.25


def test_fp8_compute_off_a_capable_gpu_names_the_fix():
    pipe = tiny_random_pipeline()
    with pytest.raises(MagrefInputError, match="fp8 compute needs fp8 matmuls, which cpu does not have.*--fp8 weights"):
        acc.enable_fp8(pipe, "compute", torch.device("cpu"))
    assert type(pipe.transformer.blocks[0].ffn.net[2].weight) is torch.nn.Parameter  # left as it was
    with pytest.raises(MagrefInputError, match="Unknown fp8 mode"):
        acc.enable_fp8(pipe, "int4")


def test_fast_preset_on_cpu_is_batched_cfg():
    pipe = tiny_random_pipeline()
    applied = acc.apply_preset(pipe, "fast", torch.device("cpu"))
    assert applied["batched_cfg"] and pipe.batched_cfg and "compile" not in applied


CP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from PIL import Image
from magref import acceleration as acc
from magref.errors import MagrefInputError
from magref.tiny import tiny_random_pipeline
rank, world = acc.init_distributed_from_env()
pipe = tiny_random_pipeline()
if world > 1:
    acc.enable_context_parallel(pipe)
    full = sum(p.numel() for p in pipe.text_encoder.parameters())
    sharded = acc.shard_encoders(pipe)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in pipe.text_encoder.parameters())
    layers = sum(p.numel() for p in pipe.text_encoder.encoder.block.parameters())
    assert set(sharded) == {"text_encoder", "image_encoder"} and local <= full - layers // 2 + 1024, (local, full, layers)
tokens = []  # the sequence length each block sees on this rank: split by the world size under Ulysses
pipe.transformer.blocks[0].norm2.register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1]))  # inside the block: diffusers splits at its entry
refs = [Image.new("RGB", (40, 60), (200, 30, 30)), Image.new("RGB", (50, 50), (20, 200, 30))]
out = pipe(prompt="a red block", references=refs, height=64, width=96, num_frames=9, num_inference_steps=3,
           output_type="latent", generator=torch.Generator().manual_seed(0)).frames
n_tokens = list(tokens)
# sliding context windows: several transformer calls per step, each window's sequence split over the ranks
from magref.context_windows import ContextWindows
windowed = pipe(prompt="a red block", references=refs, height=64, width=96, num_frames=17, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), context_windows=ContextWindows(9, 4)).frames
torch.save({"frames": out, "tokens": torch.tensor(n_tokens), "windowed": windowed}, f"{sys.argv[1]}.rank{rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
"""


def test_context_parallel_two_gloo_processes_reproduce_one(tmp_path):
    """Ulysses over the transformer and FSDP2-sharded encoders (each rank holds half of them)."""
    script = tmp_path / "cp.py"
    script.write_text(CP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    ref = torch.load(tmp_path / "one.rank0.pt", weights_only=True)
    assert set(ref["tokens"].tolist()) == {3 * 4 * 6}  # (9 frames -> 3) x (64 / 16) x (96 / 16) tokens in one process
    for rank in (0, 1):
        got = torch.load(tmp_path / f"two.rank{rank}.pt", weights_only=True)
        assert set(got["tokens"].tolist()) == {3 * 4 * 6 // 2}, got["tokens"]  # each rank's blocks see half the sequence
        torch.testing.assert_close(got["frames"], ref["frames"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["windowed"], ref["windowed"], atol=1e-5, rtol=0)  # windows under Ulysses: the one-process windowed video
