"""`--preset turbo`: the few-step, guidance-free sampling of step-distilled Wan LoRAs."""

import json

import numpy as np
import torch

from conftest import run_cli
from magref.schedulers import FlowEulerScheduler, make_scheduler, official_sigmas, solver_name


def test_flow_euler_steps_on_the_shifted_grid():
    s = make_scheduler("euler", 5.0)
    assert isinstance(s, FlowEulerScheduler) and solver_name(s) == "euler"
    s.set_timesteps(4)
    grid = official_sigmas("dpm++", 4, 5.0)
    np.testing.assert_allclose(s.sigmas.numpy(), np.append(grid, 0.0), rtol=1e-6)
    x, v = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    for i, t in enumerate(s.timesteps):
        out = s.step(v, t, x, return_dict=False)[0]
        torch.testing.assert_close(out, x + (s.sigmas[i + 1] - s.sigmas[i]) * v)  # first order: x += dsigma v
        x = out


def test_turbo_preset_sets_few_steps_and_one_pass_unless_told_otherwise(tmp_path):
    from magref.tiny import tiny_random_pipeline

    ref = tmp_path / "r.png"
    from PIL import Image

    Image.new("RGB", (24, 24), (200, 40, 40)).save(ref)
    base = ["generate", "--model", "tiny-random", "--prompt", "a ball", "--ref", ref, "--height", "64", "--width", "64", "--frames", "9", "--preset", "turbo"]
    rc, _, err = run_cli(*base, "--out", tmp_path / "t.mp4")
    assert rc == 0, err
    side = json.loads((tmp_path / "t.json").read_text())
    s = side["settings"]
    assert (s["steps"], s["guidance"], s["shift"], s["solver"], side["acceleration"]["preset"]) == (4, 1.0, 5.0, "euler", "turbo")
    rc, _, err = run_cli(*base, "--steps", "6", "--guidance", "3", "--out", tmp_path / "u.mp4")
    assert rc == 0, err
    s = json.loads((tmp_path / "u.json").read_text())["settings"]
    assert (s["steps"], s["guidance"], s["solver"]) == (6, 3.0, "euler")  # what the user gives wins
    # guidance 1 runs the transformer once per step: no unconditional pass
    pipe = tiny_random_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    pipe(prompt="a ball", references=[Image.open(ref)], height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=1.0,
         solver="euler", shift=5.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4
