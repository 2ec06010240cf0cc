"""MagrefPipeline on tiny-random: shapes, conditioning, determinism, round trip."""

import numpy as np
import pytest
import torch
from PIL import Image

from magref import MagrefPipeline
from magref.composition import compose_references
from magref.conditioning import canvas_to_tensor, reference_mask
from magref.errors import MagrefInputError

REFS = [Image.new("RGB", (40, 60), (200, 30, 30)), Image.new("RGBA", (50, 50), (20, 200, 30, 255))]


def _run(pipe, **kw):
    args = dict(prompt="a red block and a green block", references=REFS, height=64, width=96, num_frames=9, num_inference_steps=2)
    args.update(kw)
    args.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**args)


@pytest.mark.parametrize("frames", [5, 9, 13])
@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (48, 48)])
def test_frames_and_sizes(tiny_pipe, frames, hw):
    h, w = hw
    out = _run(tiny_pipe, num_frames=frames, height=h, width=w)
    assert out.frames.shape == (1, frames - 4, h, w, 3)
    assert np.isfinite(out.frames).all() and out.frames.min() >= 0 and out.frames.max() <= 1
    kept = _run(tiny_pipe, num_frames=frames, height=h, width=w, drop_first_frames=0)
    assert kept.frames.shape[1] == frames
    np.testing.assert_array_equal(kept.frames[:, 4:], out.frames)


def test_seed_determines_output(tiny_pipe):
    a = _run(tiny_pipe, output_type="latent").frames
    b = _run(tiny_pipe, output_type="latent").frames
    c = _run(tiny_pipe, output_type="latent", generator=torch.Generator().manual_seed(1)).frames
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_condition_is_mask_then_reference_latent(tiny_pipe):
    comp = compose_references(REFS, 64, 96)
    canvas = canvas_to_tensor(comp.canvas)
    cond = tiny_pipe.prepare_condition(canvas, torch.from_numpy(comp.latent_mask), 13)
    assert cond.shape == (1, 20, 4, 8, 12)
    assert torch.equal(cond[:, :4], reference_mask(torch.from_numpy(comp.latent_mask), 13))
    assert torch.equal(cond[0, :4, 0, :, :].amax(0), torch.from_numpy(comp.latent_mask).float())
    assert cond[:, :4, 1:].abs().sum() == 0  # only latent frame 0 carries the reference
    # the latent channels are the normalised VAE latent of [canvas, black frames]
    video = torch.cat([canvas[:, :, None], torch.zeros(1, 3, 12, 64, 96)], 2)
    mu = tiny_pipe.vae.encode(video).latent_dist.mode()
    m = torch.tensor(tiny_pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(tiny_pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(cond[:, 4:], (mu - m) / s)


def test_reference_mask_changes_output(tiny_pipe):
    """The region mask is an input that matters: a different layout gives a different video."""
    a = _run(tiny_pipe, output_type="latent").frames
    b = _run(tiny_pipe, output_type="latent", layout={"boxes": [[0, 0, 32, 32], [64, 32, 96, 64]]}).frames
    assert not torch.allclose(a, b)


def test_layout_seed_gives_official_placement(tiny_pipe):
    out = _run(tiny_pipe, layout_seed=1001, output_type="latent")
    assert out.composition.layout.kind == "official-random" and out.composition.layout.seed == 1001


def test_callback_can_edit_latents(tiny_pipe):
    seen = []

    def cb(pipe, i, t, kw):
        seen.append(int(t))
        return {"latents": kw["latents"] * 0}

    out = _run(tiny_pipe, output_type="latent", callback_on_step_end=cb)
    assert len(seen) == 2 and seen[0] > seen[1]
    assert out.frames.abs().max() == 0


def test_solver_and_shift_per_call(tiny_pipe):
    a = _run(tiny_pipe, output_type="latent").frames
    b = _run(tiny_pipe, output_type="latent", solver="dpm++").frames
    c = _run(tiny_pipe, output_type="latent", shift=5.0).frames
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    assert tiny_pipe.scheduler.config.flow_shift == 3.0  # the component itself is untouched


def test_save_and_load_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    loaded = MagrefPipeline.from_pretrained(tmp_path / "m")
    assert type(loaded.scheduler) is type(tiny_pipe.scheduler)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        a, b = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, y = _run(tiny_pipe, output_type="latent").frames, _run(loaded, output_type="latent").frames
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(num_frames=10), "4n\\+1"),
        (dict(height=72), "multiple of 16"),
        (dict(references=[]), "No reference"),
        (dict(references=REFS * 9), "at most 16"),
        (dict(num_frames=1), "leaves no frame"),
        (dict(prompt=None), "No prompt"),
    ],
)
def test_bad_inputs(tiny_pipe, kw, needle):
    with pytest.raises(MagrefInputError, match=needle):
        _run(tiny_pipe, **kw)


def test_ablation_conditioning_modes():
    """no-mask zeroes the mask channels; tokens appends the reference latent as one more frame
    for a 16-channel transformer; both run, and the mode survives save/load."""
    import tempfile

    from magref.conditioning import model_input, model_output
    from magref.tiny import tiny_components

    lat, cond = torch.randn(1, 16, 3, 8, 12), torch.randn(1, 20, 3, 8, 12)
    assert torch.equal(model_input(lat, cond)[:, 16:20], cond[:, :4])
    assert model_input(lat, cond, mask_channels=False)[:, 16:20].abs().sum() == 0
    tok = model_input(lat, cond, "tokens")
    assert tok.shape == (1, 16, 4, 8, 12) and torch.equal(tok[:, :, 3], cond[:, 4:, 0])
    assert model_output(torch.randn(1, 16, 4, 8, 12), "tokens").shape == (1, 16, 3, 8, 12)

    from diffusers import WanTransformer3DModel

    comps = tiny_components()
    comps["transformer"] = WanTransformer3DModel.from_config({**comps["transformer"].config, "in_channels": 16})
    pipe = MagrefPipeline(**comps, conditioning="tokens")
    out = _run(pipe, output_type="latent").frames
    assert out.shape == (1, 16, 3, 8, 12) and torch.isfinite(out).all()
    with tempfile.TemporaryDirectory() as d:
        pipe.save_pretrained(d)
        assert MagrefPipeline.from_pretrained(d).config.conditioning == "tokens"


def test_a_vae_with_spatial_stride_4_sizes_latents_masks_and_canvas_from_the_model():
    """The miniature's 4x VAE: latents, the reference mask and the allowed canvas sizes come from
    the VAE's stride (its config's scale_factor_spatial), not from the official 8."""
    from diffusers import AutoencoderKLWan

    from magref.tiny import tiny_components

    comps = tiny_components()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        comps["vae"] = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, attn_scales=[],
                                        temperal_downsample=[True, True], scale_factor_spatial=4).eval()
    pipe = MagrefPipeline(**comps)
    assert pipe.spatial_geometry() == (4, 2)
    out = _run(pipe, height=40, width=56, num_frames=9, output_type="latent")  # 40x56: a multiple of 8, not of 16
    assert out.frames.shape == (1, 16, 3, 10, 14)
    assert out.composition.latent_mask.shape == (10, 14)
    canvas = canvas_to_tensor(out.composition.canvas)
    cond = pipe.prepare_condition(canvas, torch.from_numpy(out.composition.latent_mask), 9)
    assert torch.equal(cond[0, :4, 0].amax(0), torch.from_numpy(out.composition.latent_mask).float())
    with pytest.raises(MagrefInputError, match="multiple of 8"):
        _run(pipe, height=44, width=56)
    with pytest.raises(MagrefInputError, match="multiple of 16"):  # the 8x tiny model keeps the official multiple
        _run(tiny_pipe_8x := MagrefPipeline(**tiny_components()), height=40, width=56)
    assert tiny_pipe_8x.spatial_geometry() == (8, 2)
