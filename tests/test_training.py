"""Data preparation and training on tiny-random: loss goes down, resume is bit-exact,
LoRA loads into the pipeline, 2-process FSDP on gloo runs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import run_cli
from magref.data.masking import LayoutSampler
from magref.data.shards import ClipDataset
from magref.io import read_video, sha256_file
from videos import moving_subject_video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    videos = root / "videos"
    videos.mkdir()
    for i, colour in enumerate([(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]):
        moving_subject_video(videos / f"clip{i}.mp4", colour=colour, seed=i, frames=36, caption=f"a ball of colour {i} rolls to the right")
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (videos / "corrupt.txt").write_text("broken")
    out = root / "ds"
    rc, _, err = run_cli("prepare", videos, out, "--frames", "9", "--fps", "8", "--height", "64", "--width", "64", "--samples-per-shard", "5")
    assert rc == 0, err
    assert "skipping corrupt.mp4" in err
    return out


def test_prepare_writes_a_valid_dataset(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["format"] == "magref-clips-v1" and [s["video"] for s in manifest["skipped"]] == ["corrupt.mp4"]
    ds = ClipDataset(dataset)
    assert len(ds) == manifest["num_samples"] >= 8 and len(manifest["shards"]) >= 2
    for i in range(len(ds)):
        s = ds[i]
        assert s.frames.shape == (9, 64, 64, 3) and s.frames.dtype == np.uint8
        assert s.caption.startswith("a ball of colour") and s.subjects
        sub = s.subjects[0]
        assert sub.image.mode == "RGBA" and sub.kind == "object"
        alpha = np.asarray(sub.image)[..., 3]
        assert alpha.mean() > 0.4 * 255, "the cut-out is mostly the subject"
        # the cut-out's colours are the ball's colours, not the background's
        rgb = np.asarray(sub.image)[..., :3][alpha > 0]
        assert (rgb.max(1).astype(int) - rgb.min(1)).mean() > 100


def test_prepare_resumes_without_redoing(dataset, tmp_path):
    before = (dataset / "progress.jsonl").read_text()
    videos = dataset.parent / "videos"
    rc, out, err = run_cli("prepare", videos, dataset, "--frames", "9", "--fps", "8", "--height", "64", "--width", "64", "--samples-per-shard", "5")
    assert rc == 0, err
    after = (dataset / "progress.jsonl").read_text()
    # finished videos are not redone; the skipped one is tried again (and skipped again)
    assert after.startswith(before) and [json.loads(line)["video"] for line in after[len(before):].splitlines()] == ["corrupt.mp4"]
    assert err.count("skipping") == 1 and "skipping corrupt.mp4" in err
    rc, _, err = run_cli("prepare", videos, dataset, "--frames", "13", "--height", "64", "--width", "64")
    assert rc == 2 and "other settings" in err


def test_prepare_takes_a_video_whose_caption_came_later_and_refuses_bad_settings(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    moving_subject_video(videos / "late.mp4", frames=20)  # no caption yet
    out = tmp_path / "ds"
    args = ["--frames", "9", "--fps", "8", "--height", "64", "--width", "64"]
    rc, _, err = run_cli("prepare", videos, out, *args)
    assert rc == 0 and "no caption" in err
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 0
    (videos / "late.txt").write_text("a ball rolls")
    rc, _, err = run_cli("prepare", videos, out, *args)
    manifest = json.loads((out / "manifest.json").read_text())
    assert rc == 0 and manifest["num_samples"] >= 1 and manifest["skipped"] == [], err
    for bad, needle in ((["--fps", "0"], "frame rate"), (["--fps", "nan"], "frame rate"), (["--height", "60"], "multiple of 16"),
                        (["--frames", "10"], "4n+1"), (["--samples-per-shard", "0"], "at least 1")):
        rc, _, err = run_cli("prepare", videos, tmp_path / "other", *args, *bad)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (bad, err)
        assert not (tmp_path / "other").exists()
    (videos / "captions.jsonl").write_text("{not json\n")
    rc, _, err = run_cli("prepare", videos, tmp_path / "other", *args)
    assert rc == 2 and "captions.jsonl:1 is not a caption line" in err


def test_dynamic_layouts_vary_and_stay_inside():
    sampler = LayoutSampler()
    import random

    rng = random.Random(0)
    kinds, counts = set(), set()
    for _ in range(200):
        keep, layout = sampler(3, 64, 96, rng)
        layout.validate(len(keep))
        kinds.add(layout.kind)
        counts.add(len(keep))
        assert len(set(keep)) == len(keep) and set(keep) <= {0, 1, 2}
    assert kinds == {"official-random", "user"} and counts == {1, 2, 3}
    # the subjects' own boxes: used about as often as asked, never when they do not fit the canvas
    own = [(0, 0, 20, 30), (30, 10, 60, 50), (10, 20, 40, 60)]
    mixed = LayoutSampler(p_source_boxes=0.5)
    used = 0
    for _ in range(400):
        keep, layout = mixed(3, 64, 96, rng, own)
        used += [list(c) for c in layout.cells] == [list(own[i]) for i in keep]
    assert 150 < used < 250
    too_big = [(0, 0, 200, 30)] * 3
    assert all([list(c) for c in LayoutSampler(p_source_boxes=1.0)(3, 64, 96, rng, too_big)[1].cells][0] != [0, 0, 200, 30]
               for _ in range(20))


def test_source_order_gives_the_regions_to_the_subjects_in_their_left_to_right_order():
    """`p_source_order`: grid and random layouts keep the subjects' order in the clip (regions
    sorted by centre x, then y); without it the order is shuffled and often breaks."""
    import random

    own = [(70, 10, 90, 50), (5, 10, 25, 50), (38, 10, 58, 50)]  # subject 1 leftmost, then 2, then 0

    def orders(sampler, n=200):
        rng, out = random.Random(1), []
        for _ in range(n):
            keep, layout = sampler(3, 64, 96, rng, own)
            layout.validate(len(keep))
            assert sorted(keep) == [0, 1, 2]
            regions = sorted(layout.placement, key=lambda rc: ((layout.cells[rc[1]][0] + layout.cells[rc[1]][2]) / 2,
                                                              (layout.cells[rc[1]][1] + layout.cells[rc[1]][3]) / 2))
            out.append(([keep[ref] for ref, _ in regions], layout.kind))
        return out

    ordered = orders(LayoutSampler(p_drop=0.0, p_source_order=1.0))
    assert all(o == [1, 2, 0] for o, _ in ordered) and {k for _, k in ordered} == {"official-random", "user"}
    shuffled = orders(LayoutSampler(p_drop=0.0))
    assert sum(o == [1, 2, 0] for o, _ in shuffled) < 100  # a shuffle keeps it about 1 time in 6
    # at 0 the option draws nothing: with or without the clip's boxes, the same layouts
    a, b = random.Random(3), random.Random(3)
    assert [LayoutSampler()(3, 64, 96, a, own) for _ in range(20)] == [LayoutSampler()(3, 64, 96, b) for _ in range(20)]


def test_the_cache_key_of_a_layout_without_source_order_is_that_of_older_caches():
    from magref.training.config import LayoutSettings
    from magref.training.trainer import layout_key

    assert layout_key(LayoutSettings()) == {"p_official_grid": 0.3, "p_drop": 0.2, "min_scale": 0.5, "p_source_boxes": 0.0}
    assert layout_key(LayoutSettings(p_source_order=1.0))["p_source_order"] == 1.0


def _cfg(tmp_path, dataset, name, **extra):
    cfg = {
        "model": "tiny-random", "data": str(dataset), "output_dir": str(tmp_path / name), "seed": 0, "max_steps": 20,
        "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 10, "caption_dropout": 0.1,
    }
    cfg.update(extra)
    path = tmp_path / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_that_changes_the_config_is_refused_naming_what_changed(tmp_path, dataset):
    """A resume may extend max_steps, except under a decaying learning-rate schedule (whose
    shape it sets: a cosine would jump back up); the refusal names each setting that changed."""
    cfg = _cfg(tmp_path, dataset, "cos", max_steps=2, checkpoint_every=2, lr_scheduler="cosine")
    assert run_cli("train", cfg)[0] == 0
    rc, _, err = run_cli("train", cfg, "--resume", "--set", "max_steps=4")
    assert rc != 0 and "max_steps was 2, is now 4" in err, err[-2000:]
    rc, _, err = run_cli("train", cfg, "--resume", "--set", "learning_rate=0.0005")
    assert rc != 0 and "learning_rate was 0.001, is now 0.0005" in err and "max_steps" not in err.split("Fix")[0], err[-2000:]
    const = _cfg(tmp_path, dataset, "const", max_steps=2, checkpoint_every=2, lr_scheduler="constant")
    assert run_cli("train", const)[0] == 0
    rc, _, err = run_cli("train", const, "--resume", "--set", "max_steps=3")  # a constant schedule: more steps are the same run
    assert rc == 0, err[-2000:]
    # a setting newer than the run's config.json: [1, 1] draws the epochs the run drew; [2] is named as a change from its default
    recorded = json.loads((tmp_path / "const" / "config.json").read_text())
    recorded.pop("repeats_by_references")
    (tmp_path / "const" / "config.json").write_text(json.dumps(recorded))
    rc, _, err = run_cli("train", const, "--resume", "--set", "max_steps=4", "--set", "repeats_by_references=[2]")
    assert rc != 0 and "repeats_by_references was [], is now [2]" in err, err[-2000:]
    rc, _, err = run_cli("train", const, "--resume", "--set", "max_steps=4", "--set", "repeats_by_references=[1, 1]")
    assert rc == 0, err[-2000:]


def test_a_training_folder_has_one_writer_and_a_killed_one_holds_it_no_longer(tmp_path):
    """The folder lock of `magref train` / `world train` / `batch` (their refusals:
    test_resume_is_bit_exact and others): another process holding it refuses this one, naming it;
    once that process is killed (no clean-up, as in a crash) the folder is free again: an OS lock,
    not a marker file that a crash would leave behind."""
    import subprocess
    import sys

    from conftest import kill_tree
    from magref.errors import MagrefInputError
    from magref.io import folder_lock

    holder = subprocess.Popen([sys.executable, "-c", "import time; from magref.io import folder_lock\n"
                               f"with folder_lock({str(tmp_path)!r}, '.magref-train.lock', 'the holder', 'wait'):\n"
                               "    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MagrefInputError, match=rf"the holder \(pid {holder.pid} on .*\) is already writing to"):
            with folder_lock(tmp_path, ".magref-train.lock", "magref train", "wait"):
                pass
    finally:
        kill_tree(holder.pid)
        holder.wait(timeout=30)
    with folder_lock(tmp_path, ".magref-train.lock", "magref train", "wait"):  # free again: taken at once, not refused
        assert (tmp_path / ".magref-train.lock").read_text().startswith(f"magref train (pid {os.getpid()}")


@pytest.mark.parametrize("mode,lr", [("full", 1e-3), ("lora", 5e-3)])
def test_loss_goes_down(tmp_path, dataset, mode, lr):
    cfg = _cfg(tmp_path, dataset, mode, mode=mode, learning_rate=lr, max_steps=40, checkpoint_every=40, lora={"rank": 4, "alpha": 4})
    rc, _, err = run_cli("train", cfg)
    assert rc == 0, err
    losses = _losses(tmp_path / mode)
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8]), losses
    assert (tmp_path / mode / "loss.png").stat().st_size > 1000


def test_resume_is_bit_exact(tmp_path, dataset):
    straight = _cfg(tmp_path, dataset, "straight", ema_decay=0.9)
    split = _cfg(tmp_path, dataset, "split", ema_decay=0.9)
    assert run_cli("train", straight)[0] == 0
    # a first save cut short (only a `.part` folder) holds nothing to resume: the run starts over
    ckpts = tmp_path / "split" / "checkpoints"
    (ckpts / "step-0000007.part").mkdir(parents=True)
    rc, _, err = run_cli("train", split, "--resume")
    assert rc != 0 and "has no checkpoint" in err and "start without --resume" in err
    (ckpts / "step-0000003").mkdir()  # not a checkpoint (no state.json), and not ours to overwrite
    rc, _, err = run_cli("train", split, "--set", "max_steps=10")
    assert rc != 0 and "holds step-0000003 but no complete checkpoint" in err
    (ckpts / "step-0000003").rmdir()
    rc, _, err = run_cli("train", split, "--set", "max_steps=10")
    assert rc == 0, err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000010"]  # the stale save removed
    rc, _, err = run_cli("train", split, "--set", "max_steps=10")  # a started run is not overwritten
    assert rc != 0 and "already holds a training run" in err and "--resume" in err
    from magref.io import folder_lock

    with folder_lock(tmp_path / "split", ".magref-train.lock", "magref train", "wait"):  # another trainer writes the folder: refused
        rc, _, err = run_cli("train", split, "--resume")
    assert rc == 2 and f"magref train (pid {os.getpid()}" in err and "is already writing to" in err, err[-2000:]
    rc, _, err = run_cli("train", split, "--resume")
    assert rc == 0, err
    a = load_file(tmp_path / "straight" / "checkpoints" / "step-0000020" / "trainable.safetensors")
    b = load_file(tmp_path / "split" / "checkpoints" / "step-0000020" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines())]
    mb = [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())]
    assert ma == mb and len(ma) == 20
    ea = torch.load(tmp_path / "straight" / "checkpoints" / "step-0000020" / "ema.pt", weights_only=True)
    eb = torch.load(tmp_path / "split" / "checkpoints" / "step-0000020" / "ema.pt", weights_only=True)
    assert all(torch.equal(x, y) for x, y in zip(ea["shadow_params"], eb["shadow_params"]))


def test_trained_lora_loads_and_changes_output(tmp_path, dataset):
    from magref.tiny import tiny_random_pipeline

    cfg = _cfg(tmp_path, dataset, "lora", mode="lora", learning_rate=5e-3, max_steps=10, lora={"rank": 4, "alpha": 4})
    assert run_cli("train", cfg)[0] == 0
    lora = tmp_path / "lora" / "final" / "pytorch_lora_weights.safetensors"
    assert lora.is_file()
    refs = [Image.new("RGB", (32, 32), (220, 40, 40))]
    kw = dict(prompt="a ball rolls", references=refs, height=64, width=64, num_frames=9, num_inference_steps=2, output_type="latent")
    pipe = tiny_random_pipeline()
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    pipe.load_lora_weights(lora.parent)
    tuned = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    assert not torch.allclose(base, tuned, atol=1e-4)

    # `--lora` fuses LoRAs into the weights (no adapter layers left), each at its scale: the same
    # output as the unfused adapters weighted the same way
    from magref.models import apply_loras, resolve_lora

    other = _random_lora(tmp_path / "other")
    pipe.load_lora_weights(other, adapter_name="other")
    pipe.set_adapters(["default_0", "other"], adapter_weights=[1.0, 0.5])
    both = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    fused = tiny_random_pipeline()
    records = apply_loras(fused, [resolve_lora(lora.parent), resolve_lora(other, 0.5)])
    assert not hasattr(fused.transformer, "peft_config")
    assert [(r["file"], r["scale"]) for r in records] == [(str(lora), 1.0), (str(other / "pytorch_lora_weights.safetensors"), 0.5)]
    torch.testing.assert_close(fused(**kw, generator=torch.Generator().manual_seed(0)).frames, both, atol=1e-4, rtol=0)

    # through the CLI: recorded in the sidecar (and in the fingerprint MagCache keys on); scale 0 is the base model
    args = ["generate", "--model", "tiny-random", "--prompt", "a ball rolls", "--ref", _a_ref(tmp_path), "--height", "64", "--width", "64",
            "--frames", "9", "--steps", "2"]
    videos = {}
    for name, extra in (("base", []), ("lora", ["--lora", lora.parent]), ("zero", ["--lora", lora, "--lora-scale", "0"]),
                        ("two", ["--lora", lora, "--lora", other, "--lora-scale", "1", "--lora-scale", "0.5"])):
        rc, _, err = run_cli(*args, *extra, "--out", tmp_path / f"{name}.mp4")
        assert rc == 0, err
        videos[name] = (read_video(tmp_path / f"{name}.mp4"), json.loads((tmp_path / f"{name}.json").read_text())["model"])
    assert "loras" not in videos["base"][1]
    assert videos["lora"][1]["loras"] == [{"file": str(lora), "sha256": sha256_file(lora), "scale": 1.0}]
    assert [r["scale"] for r in videos["two"][1]["loras"]] == [1.0, 0.5]
    assert len({m["fingerprint"] for _, m in videos.values()}) == 4
    assert not np.array_equal(videos["lora"][0], videos["base"][0]) and np.array_equal(videos["zero"][0], videos["base"][0])


def _random_lora(folder):
    """A LoRA of the tiny-random transformer with non-zero weights, saved as `magref train` saves one."""
    from peft import LoraConfig, get_peft_model_state_dict

    from magref import MagrefPipeline
    from magref.tiny import tiny_random_pipeline

    transformer = tiny_random_pipeline().transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights="gaussian"))
    torch.manual_seed(1)
    for name, param in transformer.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (no change); give it one
            torch.nn.init.normal_(param, std=0.2)
    MagrefPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder


def test_lora_option_refuses_what_is_not_a_lora(tmp_path):
    from safetensors.torch import save_file

    args = ["generate", "--model", "tiny-random", "--prompt", "a ball", "--ref", _a_ref(tmp_path), "--height", "64", "--width", "64",
            "--frames", "9", "--steps", "2", "--out", tmp_path / "v.mp4"]
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(32, 32)}, tmp_path / "weights.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    _random_lora(tmp_path / "tiny-lora")  # a LoRA for another base model: the tiny transformer is narrower than the miniature's
    for extra, needle in (
        (["--lora", tmp_path / "missing"], "LoRA .*missing does not exist. Fix: pass the final/ folder"),
        (["--lora", tmp_path / "notes.txt"], "is not a .safetensors file"),
        (["--lora", tmp_path / "weights.safetensors"], "is not a LoRA of this model's transformer"),
        (["--lora-scale", "0.5"], "1 --lora-scale for 0 --lora. Fix: give one --lora-scale per --lora"),
        (["--lora", tmp_path / "tiny-lora", "--lora-scale", "1", "--lora-scale", "2"], "2 --lora-scale for 1 --lora"),
        (["--lora", "someone/a-lora"], "Could not fetch LoRA someone/a-lora from the hub"),  # the tests run with HF_HUB_OFFLINE=1
        (["--model", "miniature", "--lora", tmp_path / "tiny-lora"], "tiny-lora/pytorch_lora_weights.safetensors is not a LoRA of this model's transformer "
                                                                     "\\(RuntimeError: Error\\(s\\) in loading state_dict"),
    ):
        rc, _, err = run_cli(*args, *extra)
        assert rc == 2 and re.search(needle, err) and "size mismatch" not in err, (extra, err)  # one line, not diffusers' full log
        assert not (tmp_path / "v.mp4").exists()


def test_full_finetune_exports_a_loadable_pipeline(tmp_path, dataset):
    cfg = _cfg(tmp_path, dataset, "ft", max_steps=5, checkpoint_every=5, ema_decay=0.5)
    assert run_cli("train", cfg)[0] == 0
    # the export holds the last checkpoint's averaged weights, not the raw ones and not the base model's
    ckpt = tmp_path / "ft" / "checkpoints" / "step-0000005"
    ema, raw, final = load_file(ckpt / "ema.safetensors"), load_file(ckpt / "trainable.safetensors"), _final_weights(tmp_path / "ft", "full")
    assert ema.keys() == final.keys() and all(torch.equal(ema[k], final[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    out = tmp_path / "v.mp4"
    rc, _, err = run_cli("generate", "--model", tmp_path / "ft" / "final", "--prompt", "a ball", "--ref", _a_ref(tmp_path),
                         "--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--out", out)
    assert rc == 0, err


def _a_ref(tmp_path):
    p = tmp_path / "ref.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(p)
    return p


def _final_weights(run_dir, mode):
    final = run_dir / "final"
    if mode == "lora":
        return load_file(final / "pytorch_lora_weights.safetensors")
    return {k: v for f in sorted((final / "transformer").glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_process_fsdp_gloo_equals_one_process(tmp_path, dataset, mode):
    """Two FSDP processes (stopped after 6 steps, resumed to 12) take the steps one process takes
    when it accumulates two micro-batches: the same data, noise and layouts per shard, gradients
    averaged over the shards. Equal losses and weights show FSDP really trains the sharded model
    (a rank that skipped its update, or a resume that restarted, would differ)."""
    ema = 0.5 if mode == "full" else None  # full: the export is the EMA, gathered from the ranks' shards
    common = dict(mode=mode, checkpoint_every=3, learning_rate=2e-3, lora={"rank": 4, "alpha": 4}, caption_dropout=0.0, ema_decay=ema)
    one = _cfg(tmp_path, dataset, f"one-{mode}", max_steps=12, gradient_accumulation_steps=2, **common)
    assert run_cli("train", one)[0] == 0
    two = _cfg(tmp_path, dataset, f"fsdp-{mode}", max_steps=6, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "magref.cli", "train", str(two)]
        proc = subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "Error" in line)[:4000]  # every rank's error

    torchrun()
    first = _losses(tmp_path / f"fsdp-{mode}")
    torchrun("--resume", "--set", "max_steps=12")
    losses = _losses(tmp_path / f"fsdp-{mode}")
    assert len(losses) == 12 and losses[:6] == first  # the resume appends; the first rows stay as written
    np.testing.assert_allclose(losses, _losses(tmp_path / f"one-{mode}"), rtol=1e-4)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    a, b = _final_weights(tmp_path / f"fsdp-{mode}", mode), _final_weights(tmp_path / f"one-{mode}", mode)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    # rank 0 exported the gathered weights of the last checkpoint (with EMA: the averaged ones, as one process does)
    ckpt = load_file(tmp_path / f"{'one' if ema else 'fsdp'}-{mode}" / "checkpoints" / "step-0000012" / f"{'ema' if ema else 'trainable'}.safetensors")
    by_export_name = {("transformer." + k.replace(".default", "") if mode == "lora" else k): v for k, v in ckpt.items()}
    assert set(a) <= set(by_export_name)
    for k in a:
        torch.testing.assert_close(a[k], by_export_name[k], atol=0 if not ema else 2e-5, rtol=0 if not ema else 1e-4, msg=k)


@pytest.mark.parametrize(
    "extra,needle",
    [({"lerning_rate": 1e-3}, "did you mean 'learning_rate'"), ({"mode": "half"}, "not one of full, lora"), ({"max_steps": "ten"}, "should be int"),
     ({"layout": {"p_grid": 0.5}}, "unknown key 'p_grid'"), ({"subject_loss_weight": 0.5}, "must be >= 1"),
     ({"subject_loss_weight": 5.0}, "needs per-frame subject masks"),
     ({"learning_rate": float("inf")}, "not a finite number"), ({"shift": float("nan")}, "not a finite number"),
     ({"shift": -1.0}, "shift must be > 0"), ({"layout": {"p_drop": 1.5}}, "is a probability"), ({"adam_betas": [0.9, 2]}, "adam_betas"),
     ({"weight_decay": -0.1}, "must be >= 0"), ({"layout": [1, 2]}, "must be a mapping"),
     ({"repeats_by_references": [0, 0]}, "leaves no clip"), ({"repeats_by_references": 3}, "repeats_by_references needs a list"),
     ({"repeats_by_references": [1, -1]}, "needs a list of whole numbers >= 0"), ({"repeats_by_references": [0, 1]}, "leaves no clip"),
     ({"repeats_by_references": [2], "data_loading": "stream", "cache_layouts": 0}, "chooses clips by index")],
)
def test_bad_config_exit_2(tmp_path, dataset, extra, needle):
    cfg = _cfg(tmp_path, dataset, "bad", **extra)
    rc, _, err = run_cli("train", cfg)
    assert rc == 2 and needle in err and "Traceback" not in err, err


def _tiny_detector_and_segmenter(root):
    """Tiny random OWLv2 and SAM saved as local folders, as a user's real weights would be."""
    from transformers import (Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor, SamConfig, SamImageProcessorPil,
                              SamModel, SamProcessor)

    from magref.tiny import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    owl = Owlv2ForObjectDetection(Owlv2Config(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=32))
    tok.model_max_length = 32
    owl.save_pretrained(root / "owl")
    Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok).save_pretrained(root / "owl")
    sam = SamModel(SamConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16,
                           output_channels=32, window_size=2, global_attn_indexes=[0], mlp_dim=64, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32)))
    sam.save_pretrained(root / "sam")
    SamProcessor(image_processor=SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                                      mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})).save_pretrained(root / "sam")
    return root / "owl", root / "sam"


def test_prepare_with_detector_and_segmenter_weights(tmp_path, dataset):
    owl, sam = _tiny_detector_and_segmenter(tmp_path)
    videos = dataset.parent / "videos"
    out = tmp_path / "ds"
    rc, _, err = run_cli("prepare", videos, out, "--frames", "9", "--height", "64", "--width", "64", "--extractor", "detect-segment",
                         "--detector", owl, "--segmenter", sam, "--detector-threshold", "0")
    assert rc == 0, err[-2000:]
    ds = ClipDataset(out)
    assert len(ds) >= 8
    for i in range(len(ds)):
        s = ds[i]
        assert 1 <= len(s.subjects) <= 3 and all(sub.kind in ("face", "person", "animal", "object") for sub in s.subjects)
        assert all(sub.image.mode == "RGBA" and np.asarray(sub.image)[..., 3].any() for sub in s.subjects)
    rc, _, err = run_cli("prepare", videos, tmp_path / "x", "--extractor", "detect-segment")
    assert rc == 2 and "needs detector and segmenter" in err


@pytest.mark.parametrize("on", [False, True])
def test_bf16_and_gradient_checkpointing_are_on_when_asked(tmp_path, dataset, on):
    """With both on, the blocks run in bf16 and run twice per step (recomputed in the backward);
    with both off, once and in float32: a setting that did nothing would fail one of the two."""
    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    cfg = _cfg(tmp_path, dataset, "flags", mixed_precision="bf16" if on else "no", gradient_checkpointing=on)
    trainer = Trainer(load_config(cfg), log=lambda *a: None)
    calls, dtypes = [], []
    block = trainer.transformer.blocks[0]
    block.register_forward_pre_hook(lambda m, args: calls.append(1))  # the recompute may stop before the block's end
    block.ffn.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    assert np.isfinite(trainer.train_step(0))
    assert len(calls) == (2 if on else 1) and dtypes[0] == (torch.bfloat16 if on else torch.float32)


def test_bf16_autocast_and_gradient_checkpointing_train(tmp_path, dataset):
    cfg = _cfg(tmp_path, dataset, "bf16", max_steps=12, checkpoint_every=12, mixed_precision="bf16", gradient_checkpointing=True)
    rc, _, err = run_cli("train", cfg)
    assert rc == 0, err[-2000:]
    losses = _losses(tmp_path / "bf16")
    assert len(losses) == 12 and all(np.isfinite(losses)) and np.mean(losses[-4:]) < np.mean(losses[:4])


def test_trainer_pads_text_as_the_pipeline_samples(tmp_path, dataset):
    """Wan's cross-attention has no padding mask, so the zero-padded text length is part of the
    model: the trainer's caption embeddings are exactly what the pipeline feeds the transformer."""
    import random

    import torch

    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    trainer = Trainer(load_config(_cfg(tmp_path, dataset, "text")), log=lambda *a: None)
    pipe = trainer.pipe
    example = trainer.example(0, random.Random(0))
    example["caption"] = "a red ball jumps"
    text = trainer.encode([example])["text"]
    assert text.shape[1] == pipe.config.text_len == 512
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)
    try:
        pipe(prompt="a red ball jumps", references=[Image.new("RGB", (32, 32), "red")], height=64, width=64, num_frames=5,
             num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        hook.remove()
    assert torch.equal(seen[0], text)


def test_encoding_cache_matches_live_encoding_and_is_shared(tmp_path, dataset):
    """`cache_layouts`: the cached target, condition and CLIP features are exactly what the live
    path computes for the same layout; a second run with the same encoders reads the cache
    instead of rebuilding it, a changed setting gets its own; training from it lowers the loss."""
    import shutil

    from magref.training import cache as cache_mod
    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    data = tmp_path / "ds"
    shutil.copytree(dataset, data)
    trainer = Trainer(load_config(_cfg(tmp_path, data, "c1", cache_layouts=2, first_frame="clip")), log=lambda *a: None)
    parts = sorted((data / "encodings").glob("[!t]*/part-*.safetensors"))
    assert len(parts) == 1 and trainer.cache.rows("condition", [0])[0].shape[0] == 2
    for index, k in [(0, 0), (3, 1)]:
        live = trainer.encode_visual([trainer.example(index, cache_mod.layout_rng(0, index, k))])
        cached = trainer.cache.batch([index], [k], "cpu")
        for name in ("x0", "condition", "image_embeds"):
            torch.testing.assert_close(cached[name], live[name], rtol=0, atol=1e-6)
    # two layouts of one clip differ (else the cache would freeze the layout)
    condition = trainer.cache.rows("condition", list(range(len(trainer.dataset))))
    assert not torch.equal(condition[0][0], condition[0][1])

    stamp = parts[0].stat().st_mtime_ns
    again = Trainer(load_config(_cfg(tmp_path, data, "c2", cache_layouts=2, first_frame="clip", learning_rate=3e-3)), log=lambda *a: None)
    assert parts[0].stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(again.cache.rows("condition", list(range(len(again.dataset)))), condition))
    Trainer(load_config(_cfg(tmp_path, data, "c3", cache_layouts=1, first_frame="clip")), log=lambda *a: None)
    assert len(list((data / "encodings").glob("[!t]*"))) == 2 and len(list((data / "encodings").glob("text-*"))) == 1  # captions shared

    rc, _, err = run_cli("train", _cfg(tmp_path, data, "c4", cache_layouts=2, first_frame="clip", max_steps=40, checkpoint_every=40,
                                       ema_decay=0.99))
    assert rc == 0, err
    losses = _losses(tmp_path / "c4")
    assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8]), losses
    ckpt = tmp_path / "c4" / "checkpoints" / "step-0000040"
    ema, raw = load_file(ckpt / "ema.safetensors"), load_file(ckpt / "trainable.safetensors")
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_training_from_the_stored_cache_is_bit_equal_to_live_encoding(tmp_path, dataset):
    """The cache (K layouts per clip, caption embeddings, the empty caption for dropout) is a
    faithful substitute for the encoders: a run that reads it and a run that encodes the same
    layouts and captions live every step take bit-equal steps. Stored in bfloat16 it is not."""
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(dataset, data)
    common = dict(cache_layouts=2, first_frame="canvas", caption_dropout=0.5, max_steps=6, checkpoint_every=6, learning_rate=3e-3)
    assert run_cli("train", _cfg(tmp_path, data, "live", cache_encodings=False, **common))[0] == 0
    assert not (data / "encodings").exists()  # live: nothing stored
    assert run_cli("train", _cfg(tmp_path, data, "stored", **common))[0] == 0
    assert len(list((data / "encodings").glob("text-*/part-*.safetensors"))) == 1
    assert _losses(tmp_path / "stored") == _losses(tmp_path / "live")
    a, b = (load_file(tmp_path / r / "checkpoints" / "step-0000006" / "trainable.safetensors") for r in ("stored", "live"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_cli("train", _cfg(tmp_path, data, "bf16", cache_dtype="bfloat16", **common))[0] == 0
    assert _losses(tmp_path / "bf16") != _losses(tmp_path / "live")
    assert len(list((data / "encodings").glob("[!t]*"))) == 2  # the bfloat16 cache has its own key


def test_a_cache_encoded_in_batches_has_its_own_key_and_the_same_encodings(tmp_path, dataset):
    """`cache_encode_batch: N` encodes N examples per encoder call (a GPU's small encodes are bound
    by launches): the cache it builds is stored under its own key, never mistaken for the bit-exact
    one-at-a-time cache, and holds the same encodings to float rounding, in the same order."""
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(dataset, data)
    common = dict(cache_layouts=2, first_frame="clip", cache_part_clips=4, max_steps=2)
    for name, batch in (("one", 1), ("batched", 3)):  # 3: batches that straddle clips and layouts
        assert run_cli("encode", _cfg(tmp_path, data, name, cache_encode_batch=batch, **common))[0] == 0
    keys = sorted(d for d in (data / "encodings").iterdir() if not d.name.startswith("text-"))
    assert len(keys) == 2
    assert len([d for d in (data / "encodings").iterdir() if d.name.startswith("text-")]) == 1  # captions: one cache for both
    files = [sorted(k.glob("part-*.safetensors")) for k in keys]
    assert len(files[0]) == len(files[1]) >= 2
    for a, b in zip(*files):
        x, y = load_file(a), load_file(b)
        assert x.keys() == y.keys() == {"x0", "condition", "image_embeds"}
        for k in x:
            assert x[k].shape == y[k].shape and torch.allclose(x[k], y[k], atol=1e-4, rtol=1e-4), (a.name, k, (x[k] - y[k]).abs().max())


def test_cache_encode_batch_sets_the_examples_per_encoder_call_and_not_the_fingerprint(tmp_path, dataset):
    """The encoders see `cache_encode_batch` examples per call (the last call the rest), in order;
    1 keeps one example per call. A run may change it on resume: the steps are the same to float
    rounding, so it is not in the fingerprint."""
    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    calls = {}
    for batch in (1, 4):
        cfg = load_config(_cfg(tmp_path, dataset, f"b{batch}", cache_layouts=2, cache_encodings=False, first_frame="clip", cache_encode_batch=batch))
        trainer = Trainer(cfg, log=lambda *a: None)
        seen, plain = [], trainer.encode_visual

        def spy(examples, *args, one_at_a_time=False, **kw):
            seen.append((len(examples), one_at_a_time, kw.get("with_condition", True)))
            return plain(examples, *args, one_at_a_time=one_at_a_time, **kw)

        trainer.encode_visual = spy
        enc = trainer.encode_clips([0, 1, 2], 2)
        assert enc["condition"].shape[:2] == (3, 2) and enc["x0"].shape[:2] == (3, 1)
        calls[batch] = [c for c in seen if c[0] > 0]
        fingerprint = cfg.fingerprint()
        calls.setdefault("fingerprints", []).append(fingerprint)
    assert calls[1][0] == (6, True, True) and (3, True, False) in calls[1]  # one at a time (encode_visual splits them)
    assert {c[0] for c in calls[1][1:] if not c[1]} == {1}
    assert calls[4] == [(4, False, True), (2, False, True), (3, False, False)]  # 6 examples in calls of 4; 3 targets
    assert calls["fingerprints"][0] == calls["fingerprints"][1]


@pytest.mark.heavy
def test_encode_ahead_over_two_processes_equals_one_and_training_reads_it(tmp_path, dataset):
    """`magref encode` under torchrun: each of 2 gloo processes writes its own parts, and the
    cache equals the one a single process writes, part for part; `magref train` then reads it
    without encoding anything."""
    import shutil

    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        shutil.copytree(dataset, d)
    common = dict(cache_layouts=2, first_frame="clip", cache_part_clips=2, max_steps=2)
    # both sides in processes of their own with one intra-op thread: CPU convolutions and matmuls
    # change in the last bits with the thread count, and pytest's own (torch's default: the
    # machine's cores) would make a bit-exact comparison depend on the machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "magref.cli", "encode", str(_cfg(tmp_path, one, "e1", **common))],
                            capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0 and "encoded:" in single.stdout, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "magref.cli", "encode",
           str(_cfg(tmp_path, two, "e2", **common))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = (len(ClipDataset(two)) + 1) // 2
    for what in ("encoding cache", "caption cache"):  # rank 0 builds parts 0, 2, ..., rank 1 parts 1, 3, ...
        built = sorted(int(m.group(1)) for m in re.finditer(what + r"[^:]*: (\d+) part\(s\)", proc.stdout))
        assert built == [parts // 2, (parts + 1) // 2], proc.stdout
    files = sorted(p.relative_to(one) for p in (one / "encodings").rglob("*.safetensors"))
    assert files == sorted(p.relative_to(two) for p in (two / "encodings").rglob("*.safetensors")) and len(files) > 3
    for f in files:
        x, y = load_file(one / f), load_file(two / f)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f
    stamps = {f: (two / f).stat().st_mtime_ns for f in files}
    rc, _, err = run_cli("train", _cfg(tmp_path, two, "t2", **common))
    assert rc == 0, err
    assert "part(s)" not in err and {f: (two / f).stat().st_mtime_ns for f in files} == stamps
    rc, _, err = run_cli("encode", _cfg(tmp_path, two, "t3", cache_layouts=0))
    assert rc == 2 and "cache_layouts: 2" in err


def test_clip_stream_reads_each_shard_once_per_epoch_in_a_seeded_order(dataset):
    """The stream: every sample once per epoch, rank r's shards only (two ranks cover the dataset
    without overlap), an order that depends on the seed and the epoch and not on the file order,
    and `skip(n)` puts a new stream where an old one was after n samples."""
    from magref.data.stream import ClipStream

    data = ClipDataset(dataset)
    keys = [k for _, k in data.index]
    n = len(keys)
    stream = ClipStream(str(dataset), seed=3, buffer=4)
    first, second = [s.key for s in stream.take(n)], [s.key for s in stream.take(n)]
    assert sorted(first) == sorted(keys) == sorted(second) and first != keys and first != second
    assert [s.key for s in ClipStream(str(dataset), seed=3, buffer=4).take(n)] == first
    assert [s.key for s in ClipStream(str(dataset), seed=4, buffer=4).take(n)] != first
    halves = [{s.key for s in ClipStream(str(dataset), seed=3, rank=r, world_size=2).take(n // 2)} for r in (0, 1)]
    shards = data.manifest["shards"]
    assert halves[0].isdisjoint(halves[1]) and halves[0] <= {k for s in shards[0::2] for k in s["keys"]}
    later = ClipStream(str(dataset), seed=3, buffer=4)
    later.skip(n + 3)
    assert [s.key for s in later.take(4)] == second[3:7]
    sample = ClipStream(str(dataset), seed=3, buffer=4).take(1)[0]
    assert sample.frames.shape == data[keys.index(sample.key)].frames.shape and sample.caption == data.caption(keys.index(sample.key))
    far = ClipStream(str(dataset), seed=3, buffer=4)
    far.skip(5 * n + 2)  # whole epochs are jumped, not read
    assert [s.key for s in far.take(3)] == [d["__key__"] for d in ClipStream(str(dataset), seed=3, buffer=4).epoch(5)][2:5]

    # from object storage: any fsspec URL (here its in-memory file system), the same stream
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in dataset.iterdir():
        if path.is_file():
            memory.pipe(f"/streamed/{path.name}", path.read_bytes())
    assert [s.key for s in ClipStream("memory://streamed", seed=3, buffer=4).take(n)] == first


def test_training_from_a_stream_resumes_where_it_stopped(tmp_path, dataset):
    """data_loading: stream trains, and a run stopped at step 4 and resumed to 8 takes the steps
    of an uninterrupted run (the stream is skipped to where it was, not restarted)."""
    common = dict(data_loading="stream", shuffle_buffer=4, checkpoint_every=4, caption_dropout=0.0, gradient_accumulation_steps=2)
    assert run_cli("train", _cfg(tmp_path, dataset, "whole", max_steps=8, **common))[0] == 0
    assert run_cli("train", _cfg(tmp_path, dataset, "parts", max_steps=4, **common))[0] == 0
    rc, _, err = run_cli("train", _cfg(tmp_path, dataset, "parts", max_steps=4, **common), "--resume", "--set", "max_steps=8")
    assert rc == 0, err
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole") and len(_losses(tmp_path / "whole")) == 8
    assert run_cli("train", _cfg(tmp_path, dataset, "random", max_steps=8, caption_dropout=0.0, checkpoint_every=4))[0] == 0
    assert _losses(tmp_path / "random") != _losses(tmp_path / "whole")  # another order of samples
    rc, _, err = run_cli("train", _cfg(tmp_path, dataset, "bad", data_loading="stream", cache_layouts=2))
    assert rc == 2 and "cache_layouts: 0" in err


def test_latent_subject_mask_follows_the_causal_vae_grouping():
    """Frame 0 is its own latent frame, then 4 frames per latent frame; 8x8 pixels per cell."""
    from magref.training.flow import latent_subject_mask

    masks = np.zeros((13, 64, 64), np.uint8)
    masks[0, 3, 60] = 1  # latent frame 0, cell (0, 7)
    masks[6, 20, 9] = 1  # frames 5-8 -> latent frame 2, cell (2, 1)
    masks[12, 63, 0] = 1  # frames 9-12 -> latent frame 3, cell (7, 0)
    got = latent_subject_mask(masks)
    assert got.shape == (4, 8, 8)
    want = torch.zeros(4, 8, 8)
    want[0, 0, 7] = want[2, 2, 1] = want[3, 7, 0] = 1
    assert torch.equal(got, want)


def test_weighted_mse_weights_cells_and_keeps_the_plain_scale():
    from magref.training.flow import weighted_mse

    pred, target = torch.randn(2, 16, 4, 8, 8), torch.randn(2, 16, 4, 8, 8)
    plain = torch.nn.functional.mse_loss(pred, target)
    assert torch.allclose(weighted_mse(pred, target, None), plain)
    assert torch.allclose(weighted_mse(pred, target, torch.full((2, 4, 8, 8), 3.0)), plain)  # uniform weights change nothing
    weight = torch.ones(2, 4, 8, 8)
    weight[:, :, :2] = 5.0
    err = ((pred - target) ** 2).mean(1)  # (B, F, h, w), the channels share a cell's weight
    want = (5 * err[:, :, :2].sum() + err[:, :, 2:].sum()) / (5 * err[:, :, :2].numel() + err[:, :, 2:].numel())
    assert torch.allclose(weighted_mse(pred, target, weight), want)


def test_config_max_grad_norm_zero_turns_clipping_off_and_is_accepted(tmp_path, dataset):
    from magref.training.config import load_config

    assert load_config(_cfg(tmp_path, dataset, "noclip", max_grad_norm=0.0)).max_grad_norm == 0.0


def _fake_gpus(monkeypatch, gpus, world, local_world, local_rank):
    import torch.distributed as dist

    from magref import distributed

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(dist, "is_initialized", lambda: "backend" in calls)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.setdefault("backend", backend))
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (local_rank, world))
    return calls


@pytest.mark.parametrize("world,local_world,gpus,backend,device",
                         [(2, 2, 2, "nccl", 1), (16, 8, 8, "nccl", 7), (6, 6, 1, "gloo", 0), (6, 6, 4, "gloo", 1), (2, 2, 0, "gloo", None)])
def test_encoding_processes_beyond_the_gpus_share_them_over_gloo(monkeypatch, world, local_world, gpus, backend, device):
    """`torchrun --nproc_per_node 6 magref encode` on one GPU: NCCL refuses two ranks on a GPU, so
    such ranks meet over gloo and take the GPUs round-robin (the last local rank here); a
    machine with a GPU per process (one node of two here) stays on NCCL."""
    from magref import distributed

    calls = _fake_gpus(monkeypatch, gpus, world, local_world, local_world - 1)
    assert distributed.init_from_env(share_gpus=True) == (local_world - 1, world)
    assert calls.get("backend") == backend and calls.get("device") == device


@pytest.mark.parametrize("env,rank", [({}, 0), ({"RANK": "1"}, 0), ({"RANK": "1", "WORLD_SIZE": "1"}, 0), ({"RANK": "", "WORLD_SIZE": "4"}, 0),
                                      ({"RANK": "0", "WORLD_SIZE": "4"}, 0), ({"RANK": "3", "WORLD_SIZE": "4"}, 3)])
def test_the_launch_rank_is_torchruns_only_in_a_multi_process_launch(monkeypatch, env, rank):
    """What one process of a launch does alone (warn, print, lock a folder) follows the rank only
    when WORLD_SIZE says several processes run, as `init_from_env` decides: a stray RANK in a
    single process's environment must not silence it or leave its folder unlocked."""
    from magref.distributed import launch_rank

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch_rank() == rank


def test_training_with_more_processes_than_gpus_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """FSDP over gloo on CUDA tensors is not supported: training (not encoding) with 4 processes
    on 2 GPUs stops at once with a line that says how many to start."""
    import yaml

    from magref import distributed
    from magref.errors import MagrefInputError
    from magref.training.trainer import run

    calls = _fake_gpus(monkeypatch, 2, 4, 4, 3)
    with pytest.raises(MagrefInputError, match=r"4 processes on this machine but 2 GPU\(s\).*nproc_per_node 2"):
        distributed.init_from_env()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tmp_path / "none"), "data": str(tmp_path / "none"), "output_dir": str(tmp_path / "o")}))
    with pytest.raises(MagrefInputError, match="4 processes on this machine but 2 GPU"):
        run(str(cfg))
    assert calls == {}
