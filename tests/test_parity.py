"""Parity with the official implementation (../shared/golden, see its MANIFEST.md).

Tolerance: max abs error <= 1e-4 in float32, never loosened."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import golden, run_cli
from magref import checkpoints as ck
from magref.conditioning import CLIP_MEAN, CLIP_STD, clip_image_processor, clip_pixel_values
from magref.schedulers import make_scheduler

TOL = 1e-4


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def official_transformer():
    return ck.load_transformer(golden("model", "dit_official"))


@pytest.fixture(scope="module")
def dit_io():
    return load_file(golden("model", "dit_io.safetensors"))


def _pad(ctx, length=512):
    return torch.cat([ctx, ctx.new_zeros(length - ctx.shape[0], ctx.shape[1])])[None]


def _dit(model, io, t):
    x = torch.cat([io["x"], io["y"]])[None]
    out = model(x, torch.tensor([t]), _pad(io["context"]), io["clip_fea"], return_dict=False)[0]
    return out[0]


@pytest.mark.parametrize("solver,prefix", [("unipc", "unipc"), ("dpm++", "dpmpp")])
@pytest.mark.parametrize("steps,shift", [(40, 3), (4, 3), (50, 5)])
def test_parity_scheduler_grid(solver, prefix, steps, shift):
    gold = load_file(golden("model", "scheduler.safetensors"))
    s = make_scheduler(solver, float(shift))
    s.set_timesteps(steps)
    assert torch.equal(s.timesteps.float(), gold[f"{prefix}_{steps}_shift{shift}_timesteps"])
    assert max_err(s.sigmas, gold[f"{prefix}_{steps}_shift{shift}_sigmas"]) <= TOL


@pytest.mark.parametrize("solver,prefix", [("unipc", "unipc"), ("dpm++", "dpmpp")])
def test_parity_scheduler_toy_trajectory(solver, prefix):
    gold = load_file(golden("model", "scheduler.safetensors"))
    s = make_scheduler(solver, 3.0)
    s.set_timesteps(40)
    z = gold["toy_z0"].clone()
    for t in s.timesteps:
        z = s.step(0.7 * z - gold["toy_target"] * (t / 1000), t, z, return_dict=False)[0]
    assert max_err(z, gold[f"{prefix}_40_shift3_toy_trajectory_final"]) <= TOL


def test_parity_stock_diffusers_grid_differs():
    """Why the scheduler subclasses exist: stock flow sigmas miss the official timesteps."""
    from diffusers import UniPCMultistepScheduler

    gold = load_file(golden("model", "scheduler.safetensors"))
    stock = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    stock.set_timesteps(40)
    assert (stock.timesteps.float() - gold["unipc_40_shift3_timesteps"]).abs().max() >= 1


@pytest.mark.parametrize("t", [999, 500, 37])
def test_parity_transformer(official_transformer, dit_io, t):
    assert max_err(_dit(official_transformer, dit_io, t), dit_io[f"dit_out_t{t}"]) <= TOL


def test_parity_transformer_convert_cli_then_plain_diffusers(tmp_path, dit_io):
    from diffusers import WanTransformer3DModel

    rc, _, err = run_cli("convert", golden("model", "dit_official"), tmp_path / "t", "--component", "transformer")
    assert rc == 0, err
    model = WanTransformer3DModel.from_pretrained(tmp_path / "t")
    for t in (999, 500, 37):
        assert max_err(_dit(model, dit_io, t), dit_io[f"dit_out_t{t}"]) <= TOL


def test_parity_sampling_loop(official_transformer, dit_io):
    from magref.pipeline import MagrefPipeline
    from magref.tiny import tiny_components

    gold = load_file(golden("model", "sampling_loop.safetensors"))
    pipe = MagrefPipeline(**{**tiny_components(), "transformer": official_transformer})
    for solver, key in (("unipc", "unipc_6steps_shift3_guide5_seed3407_final"), ("dpm++", "dpmpp_6steps_shift3_guide5_seed3407_final")):
        noise = pipe.prepare_noise(1, 48, 64, 9, "cpu", torch.Generator().manual_seed(3407))
        assert torch.equal(noise[0], gold["noise_seed3407"])
        scheduler = make_scheduler(solver, 3.0)
        scheduler.set_timesteps(6)
        out = pipe.denoise(noise, dit_io["y"][None], _pad(dit_io["context"]), _pad(dit_io["context_null"]), dit_io["clip_fea"], scheduler, 5.0)
        assert max_err(out[0], gold[key]) <= TOL, solver
        # the batched-CFG path (both guidance branches in one forward, `--preset fast`) too
        scheduler.set_timesteps(6)
        out = pipe.denoise(noise, dit_io["y"][None], _pad(dit_io["context"]), _pad(dit_io["context_null"]), dit_io["clip_fea"], scheduler, 5.0,
                           batched_cfg=True)
        assert max_err(out[0], gold[key]) <= TOL, f"{solver}, batched CFG"


def test_parity_sampling_loop_through_call(official_transformer, dit_io):
    """`MagrefPipeline.__call__` end to end against the golden loop: the golden prompt embeddings
    as inputs, the golden condition and CLIP features where the pipeline computes them (the
    encoders have their own parity tests); checks that __call__ wires noise, scheduler, guidance
    and both branches as the official loop does."""
    from PIL import Image

    from magref.pipeline import MagrefPipeline
    from magref.tiny import tiny_components

    gold = load_file(golden("model", "sampling_loop.safetensors"))
    pipe = MagrefPipeline(**{**tiny_components(), "transformer": official_transformer})
    pipe.prepare_condition = lambda canvas, latent_mask, num_frames: dit_io["y"][None]
    pipe.encode_image = lambda canvas, device=None: dit_io["clip_fea"]
    for solver, key in (("unipc", "unipc_6steps_shift3_guide5_seed3407_final"), ("dpm++", "dpmpp_6steps_shift3_guide5_seed3407_final")):
        out = pipe(references=[Image.new("RGB", (16, 16))], prompt_embeds=_pad(dit_io["context"]), negative_prompt_embeds=_pad(dit_io["context_null"]),
                   height=48, width=64, num_frames=9, num_inference_steps=6, guidance_scale=5.0, shift=3.0, solver=solver,
                   generator=torch.Generator().manual_seed(3407), output_type="latent")
        assert max_err(out.frames[0], gold[key]) <= TOL, solver


def _vae_check(vae):
    io = load_file(golden("model", "vae_io.safetensors"))
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(mean.flatten(), io["latents_mean"]) and torch.allclose(std.flatten(), io["latents_std"])
    with torch.no_grad():
        latent = (vae.encode(io["video"]).latent_dist.mode() - mean) / std
        decoded = vae.decode(io["latent"] * std + mean).sample
    assert max_err(latent, io["latent"]) <= TOL
    assert max_err(decoded, io["decoded"]) <= TOL


@pytest.mark.parametrize("name", ["vae_official.pth", "vae_official.safetensors"])
def test_parity_vae(name):
    _vae_check(ck.load_vae(golden("model", name)))


def test_parity_vae_convert_cli_then_plain_diffusers(tmp_path):
    from diffusers import AutoencoderKLWan

    rc, _, err = run_cli("convert", golden("model", "vae_official.pth"), tmp_path / "v", "--component", "vae")
    assert rc == 0, err
    _vae_check(AutoencoderKLWan.from_pretrained(tmp_path / "v"))


def test_parity_t5():
    io = load_file(golden("encoders", "t5_io.safetensors"))
    model = ck.load_text_encoder(golden("encoders", "t5_official.pth"))
    with torch.no_grad():
        hidden = model(input_ids=io["ids"], attention_mask=io["mask"]).last_hidden_state
    keep = io["mask"].bool()
    assert max_err(hidden[keep], io["hidden"][keep]) <= TOL


def test_parity_clip():
    cfg = json.loads(golden("encoders", "encoders.json").read_text())["clip_visual_config_official"]
    io = load_file(golden("encoders", "clip_io.safetensors"))
    model = ck.load_image_encoder(golden("encoders", "clip_visual_official.pth"), num_heads=cfg["num_heads"])
    size = (cfg["image_size"], cfg["image_size"])
    pixel_values = clip_pixel_values(io["canvas"][None], size, CLIP_MEAN, CLIP_STD)
    assert max_err(pixel_values, io["pixel_values"]) <= TOL
    with torch.no_grad():
        features = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
    assert max_err(features, io["features"]) <= TOL


def test_parity_clip_through_pipeline_encode_image():
    """The pipeline's encode_image applies the official preprocessing, not the PIL processor."""
    from magref.pipeline import MagrefPipeline
    from magref.tiny import tiny_components

    cfg = json.loads(golden("encoders", "encoders.json").read_text())["clip_visual_config_official"]
    io = load_file(golden("encoders", "clip_io.safetensors"))
    encoder = ck.load_image_encoder(golden("encoders", "clip_visual_official.pth"), num_heads=cfg["num_heads"])
    pipe = MagrefPipeline(**{**tiny_components(), "image_encoder": encoder, "image_processor": clip_image_processor(cfg["image_size"])})
    assert max_err(pipe.encode_image(io["canvas"][None], torch.device("cpu")), io["features"]) <= TOL
