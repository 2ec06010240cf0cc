"""Sliding context windows: the plan of windows, the blend, and the pipeline and CLI on tiny-random."""

import json
import re

import pytest
import torch
from PIL import Image

from conftest import EXAMPLES, run_cli
from magref.context_windows import ContextWindows, windowed_velocity
from magref.errors import MagrefInputError
from magref.tiny import tiny_random_pipeline

REFS = [Image.new("RGB", (40, 60), (200, 30, 30))]


@pytest.mark.parametrize("frames,overlap,T", [(13, 4, 13), (13, 4, 25), (13, 8, 25), (9, 4, 21), (81, 20, 41), (13, 4, 4)])
def test_windows_cover_every_frame_with_the_trained_length(frames, overlap, T):
    w = ContextWindows(frames, overlap)
    spans = w.spans(T)
    covered = sorted({i for s in spans for i in s})
    assert covered == list(range(1, T))
    if T - 1 > w.latent_length - 1:
        assert all(len(s) == w.latent_length - 1 for s in spans) and spans[-1][-1] == T - 1
        assert all(a[-1] >= b[0] for a, b in zip(spans, spans[1:]))  # neighbours overlap
    else:
        assert spans == [list(range(1, T))]


def test_blend_is_normalised_and_keeps_the_first_windows_slot():
    """Each frame's velocity is the weighted mean of the windows covering it; frame 0 comes from
    the first window; every window sees the trained-length condition."""
    w = ContextWindows(13, 4)
    latents = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1, 1).expand(1, 2, 10, 2, 2).contiguous()
    condition = torch.randn(1, 3, 10, 2, 2)
    seen = []

    def velocity(lat, cond):
        seen.append((lat.shape[2], cond.shape[2], torch.equal(cond, condition[:, :, :4])))
        return lat * 2  # each frame's own value: the blend must give it back
    out = windowed_velocity(velocity, latents, condition, w)
    torch.testing.assert_close(out, latents * 2)
    assert all(s == (4, 4, True) for s in seen) and len(seen) == len(w.spans(10)) > 1
    assert w.weights(3).min() > 0 and ContextWindows(13, 4, "pyramid").weights(3).tolist() == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("frames,overlap,needle", [(12, 4, "4n+1"), (5, 0, "4n+1"), (13, 3, "multiple of 4"), (13, 12, "below"), (13, -4, "multiple")])
def test_bad_windows_are_refused(frames, overlap, needle):
    with pytest.raises(MagrefInputError, match=re.escape(needle)):
        ContextWindows(frames, overlap)


def test_windows_in_the_pipeline_see_the_trained_length_and_a_window_as_long_as_the_video_is_one_pass():
    pipe = tiny_random_pipeline()
    kw = dict(prompt="a red block", references=REFS, height=32, width=32, num_frames=25, num_inference_steps=2, output_type="latent")
    one = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    same = pipe(**kw, generator=torch.Generator().manual_seed(0), context_windows=ContextWindows(25, 4)).frames
    assert torch.equal(one, same)
    lengths = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: lengths.append(kwargs["hidden_states"].shape[2]), with_kwargs=True)
    windowed = pipe(**kw, generator=torch.Generator().manual_seed(0), context_windows=ContextWindows(9, 4)).frames
    hook.remove()
    assert set(lengths) == {3} and windowed.shape == one.shape and torch.isfinite(windowed).all() and not torch.equal(windowed, one)
    both = pipe(**kw, generator=torch.Generator().manual_seed(0), context_windows=ContextWindows(9, 4), batched_cfg=True).frames
    torch.testing.assert_close(both, windowed, atol=1e-5, rtol=0)


def test_generate_longer_than_trained_uses_windows_records_them_and_refuses_a_step_cache(tmp_path):
    small = ["--model", "tiny-random", "--height", "32", "--width", "32", "--steps", "1", "--ref", EXAMPLES / "character.png", "--prompt", "x"]
    rc, _, err = run_cli("generate", *small, "--frames", "21", "--context-frames", "9", "--out", tmp_path / "w.mp4")
    assert rc == 0, err
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["context_windows"] == {"frames": 9, "overlap": 4, "blend": "linear"} and meta["output"]["frames"] == 17
    rc, _, err = run_cli("generate", *small, "--frames", "21", "--context-frames", "0", "--out", tmp_path / "o.mp4")
    assert rc == 0 and json.loads((tmp_path / "o.json").read_text())["context_windows"] is None
    rc, _, err = run_cli("generate", *small, "--frames", "21", "--context-frames", "9", "--cache", "fbcache", "--out", tmp_path / "c.mp4")
    assert rc == 2 and "does not combine with context windows" in err and not (tmp_path / "c.mp4").exists()


def test_windows_under_lowmem_offloading_give_the_same_video():
    """Group offloading moves weights per block; windows call the transformer several times per
    step: together they give the windowed video of the plain pipeline."""
    from magref import acceleration as acc

    kw = dict(prompt="a red block", references=REFS, height=32, width=32, num_frames=21, num_inference_steps=2, output_type="latent",
              context_windows=ContextWindows(9, 4))
    plain = tiny_random_pipeline()(**kw, generator=torch.Generator().manual_seed(0)).frames
    pipe = tiny_random_pipeline()
    acc.apply_preset(pipe, "lowmem", torch.device("cpu"))
    torch.testing.assert_close(pipe(**kw, generator=torch.Generator().manual_seed(0)).frames, plain, atol=1e-5, rtol=0)
