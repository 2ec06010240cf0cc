"""The procedural world: identities are deterministic and distinct, held-out ids never reach
training data, clips carry correct masks and captions, datasets load in the trainer's format."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magref.errors import MagrefInputError

from magref.data.shards import ClipDataset
from magref.world import identity, make_clip, render_subject
from magref.world.build import build_world_dataset
from magref.world.identities import identity_ids
from magref.world.clips import caption
from magref.world.render import PALETTE, is_held_out


def test_identities_are_deterministic_and_distinct():
    assert identity(7).params == identity(7).params
    sprites = [np.asarray(render_subject(identity(i), 32)) for i in range(40)]
    assert all(s.shape == (32, 32, 4) and s[..., 3].max() == 255 and s[0, 0, 3] == 0 for s in sprites)
    distinct = {s.tobytes() for s in sprites}
    assert len(distinct) == 40
    assert len({identity(i).describe() for i in range(40)}) >= 30


def test_split_has_no_overlap():
    train, held = set(identity_ids("train")), set(identity_ids("heldout"))
    assert train and held and not train & held and all(is_held_out(i) for i in held)


def test_clip_masks_and_caption():
    rng = np.random.default_rng(0)
    clip = make_clip([identity(1), identity(2)], rng, frames=9, height=64, width=64, motions=["moves from left to right", "jumps up and down"], scene="beach")
    assert clip.frames.shape == (9, 64, 64, 3) and clip.masks.shape == (2, 9, 64, 64)
    assert clip.masks.any(axis=(2, 3)).all() and not (clip.masks[0] & clip.masks[1]).any()
    assert identity(1).describe() in clip.caption.lower() and "moves from left to right" in clip.caption and "beach" in clip.caption
    xs = [np.nonzero(clip.masks[0, t])[1].mean() for t in (0, 8)]
    assert xs[1] > xs[0] + 5  # it really moved right
    # kind captions: the same clip, and words that name no colour (only a reference says which one)
    kind = make_clip([identity(1), identity(2)], np.random.default_rng(0), frames=9, height=64, width=64,
                     motions=["moves from left to right", "jumps up and down"], scene="beach", caption_style="kind")
    assert np.array_equal(kind.frames, clip.frames)
    names = [identity(i).describe(appearance=False) for i in (1, 2)]
    assert kind.caption.lower() == f"{names[0]} moves from left to right and {names[1]} jumps up and down in a beach."
    assert any(c in clip.caption for c in PALETTE) and not any(c in kind.caption for c in PALETTE)
    with pytest.raises(ValueError, match="caption style"):
        make_clip([identity(1)], np.random.default_rng(0), frames=5, caption_style="colourful")


def test_world_dataset_loads_and_is_heldout_clean(tmp_path):
    build_world_dataset(tmp_path / "train", 6, "train", frames=9, samples_per_shard=4)
    build_world_dataset(tmp_path / "held", 3, "heldout", frames=9, subjects=2)
    ds = ClipDataset(tmp_path / "train")
    assert len(ds) == 6 and len(ds.manifest["shards"]) == 2
    for i in range(len(ds)):
        s = ds[i]
        assert s.frames.shape == (9, 64, 64, 3) and len(s.subjects) == 1 and not any(is_held_out(j) for j in s.meta["identities"])
    held = ClipDataset(tmp_path / "held")
    assert all(is_held_out(j) for i in range(len(held)) for j in held[i].meta["identities"])
    assert all(len(held[i].subjects) == 2 for i in range(len(held)))
    # the per-frame subject masks (for subject-weighted training) are the union of the clip's own
    for data, split, subjects in ((ds, "train", 1), (held, "heldout", 2)):
        for i in range(len(data)):
            s = data[i]
            rng = np.random.default_rng([0, int(s.meta["source"].split("/")[-1])])  # as build_world_dataset draws clip k
            ids = [int(j) for j in rng.choice(identity_ids(split), size=subjects, replace=False)]
            clip = make_clip([identity(j) for j in ids], rng, 9, 64, 64)
            assert ids == s.meta["identities"] and np.array_equal(clip.frames, s.frames)
            assert s.masks.dtype == np.uint8 and np.array_equal(s.masks, clip.masks.any(0)) and s.masks.sum() > 0


def test_world_dataset_is_the_same_rendered_by_several_processes(tmp_path):
    """Clips rendered by 2 worker processes are written in order and equal the serial ones."""
    a = build_world_dataset(tmp_path / "one", 7, "train", frames=5, subjects=(1, 2), samples_per_shard=3, log=lambda *a: None)
    b = build_world_dataset(tmp_path / "two", 7, "train", frames=5, subjects=(1, 2), samples_per_shard=3, log=lambda *a: None, workers=2)
    assert a == b and len(a["shards"]) == 3
    one, two = ClipDataset(tmp_path / "one"), ClipDataset(tmp_path / "two")
    for i in range(len(one)):
        s, t = one[i], two[i]
        assert (s.key, s.caption, s.meta) == (t.key, t.caption, t.meta)
        assert np.array_equal(s.frames, t.frames) and np.array_equal(s.masks, t.masks)
        assert [np.asarray(x.image).tobytes() for x in s.subjects] == [np.asarray(x.image).tobytes() for x in t.subjects]


def test_multi_subject_recipe_data_mixes_one_to_three_subjects_each_cut_out(tmp_path):
    """Recipe 2 (beyond the paper): clips of 1-3 training identities, a cut-out of each visible
    subject, the counts recorded in the manifest; a run refuses data of the other recipe."""
    manifest = build_world_dataset(tmp_path / "multi", 12, "train", frames=9, subjects=(1, 2, 3), cutout_frame=0)
    assert manifest["world"]["subjects"] == [1, 2, 3]
    ds = ClipDataset(tmp_path / "multi")
    counts = [len(ds[i].meta["identities"]) for i in range(len(ds))]
    assert set(counts) == {1, 2, 3}
    for i in range(len(ds)):
        s = ds[i]
        assert 1 <= len(s.subjects) <= len(s.meta["identities"]) and not any(is_held_out(j) for j in s.meta["identities"])
    import shutil

    from magref.models import WORLD_VAE_PATH
    from magref.world.train import run

    shutil.copytree(tmp_path / "multi", tmp_path / "run" / "data")

    with pytest.raises(MagrefInputError, match="not those of recipe 'single'"):
        run(tmp_path / "run", vae_from=WORLD_VAE_PATH, clips=12, dit_steps=1, batch_size=1, recipe="single", log=lambda *a: None)


    # repeats_by_references: an epoch shows each clip as often as its number of references says
    import yaml

    from magref.training.config import load_config
    from magref.training.trainer import Trainer

    refs = [ds.references(i) for i in range(len(ds))]
    assert refs == [len(ds[i].subjects) for i in range(len(ds))]

    def epoch(repeats, name):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"model": "tiny-random", "data": str(tmp_path / "multi"), "output_dir": str(tmp_path / name), "seed": 0,
                                       "max_steps": 4, "batch_size": 1, "repeats_by_references": repeats}))
        trainer = Trainer(load_config(cfg), log=lambda *a: None)
        n = len(trainer.epoch_pool)
        return [i for step in range(n) for i in trainer.sample_indices(step)], n  # one whole epoch

    plain, n = epoch([], "plain")
    assert n == len(ds) and plain == np.random.default_rng([0, 0]).permutation(len(ds)).tolist()  # every clip once, in the order from before the option
    weighted, n = epoch([3, 0, 1], "weighted")
    assert n == sum({1: 3, 2: 0, 3: 1}[k] for k in refs)
    assert sorted(weighted) == sorted(i for i, k in enumerate(refs) for _ in range({1: 3, 2: 0, 3: 1}[k]))
    with pytest.raises(MagrefInputError, match="leaves no clip"):
        epoch([0, 0, 0, 1], "none")

    # `world train` checks the option before any stage runs, and a resume keeps the run's own
    from magref.world.train import _run_repeats

    with pytest.raises(MagrefInputError, match="leaves out every clip of recipe 'single'"):
        run(tmp_path / "single", vae_from=WORLD_VAE_PATH, clips=12, dit_steps=1, recipe="single", repeats_by_references=[0], log=lambda *a: None)
    assert not (tmp_path / "single" / "dit.yaml").exists() and not (tmp_path / "single" / "data").exists()
    started = tmp_path / "started"
    (started / "dit" / "checkpoints" / "step-00000001").mkdir(parents=True)
    (started / "dit" / "checkpoints" / "step-00000001" / "state.json").write_text("{}")  # a complete checkpoint: the transformer has trained
    (started / "dit.yaml").write_text(yaml.safe_dump({"repeats_by_references": [3, 1, 1]}))
    assert _run_repeats(started, None, "multi") == [3] == _run_repeats(started, [3, 1], "multi")
    with pytest.raises(MagrefInputError, match="trained with --repeats-by-references 3, not 2"):
        _run_repeats(started, [2, 1, 1], "multi")
    with pytest.raises(MagrefInputError, match="leaves out every clip of recipe 'multi'"):
        _run_repeats(tmp_path / "fresh", [0, 0, 0], "multi")
    with pytest.raises(MagrefInputError, match="weights nothing in recipe 'single'"):
        _run_repeats(tmp_path / "fresh", [3], "single")
    from conftest import run_cli

    rc, _, err = run_cli("world", "train", "--out", tmp_path / "cli", "--vae", WORLD_VAE_PATH, "--recipe", "multi", "--clips", "4", "--data-only",
                         "--repeats-by-references", "3", "1", "1", "--train-shift", "1")
    assert rc == 0, err[-2000:]
    written = yaml.safe_load((tmp_path / "cli" / "dit.yaml").read_text())  # what the trainer reads
    assert written["repeats_by_references"] == [3] and written["shift"] == 1.0

    # --train-shift: the trainer's noise-level shift, kept on a resume like the repeats
    from magref.world.train import _run_setting

    def shift(folder, given=None):
        return _run_setting(folder, "shift", given, 3.0, "--train-shift", normalise=float)

    (started / "dit.yaml").write_text(yaml.safe_dump({"shift": 1.0}))
    assert shift(started) == 1.0 == shift(started, 1)
    with pytest.raises(MagrefInputError, match="trained with --train-shift 1.0, not 3.0"):
        shift(started, 3)
    stopped = tmp_path / "stopped"  # stopped in the VAE or data stages: dit.yaml not written yet, run.json says what was asked
    stopped.mkdir()
    (stopped / "run.json").write_text(json.dumps({"size": 64, "shift": 0.5}))
    assert shift(stopped) == 0.5 and shift(tmp_path / "fresh") == 3.0
    (stopped / "dit.yaml").write_text(yaml.safe_dump({"shift": 1.0, "repeats_by_references": [2]}))  # an older request's, before any step
    assert shift(stopped) == 0.5 and shift(stopped, 3) == 3.0  # the last request wins until the transformer trains
    (stopped / "run.json").write_text(json.dumps({"size": 64, "shift": 0.5, "repeats_by_references": [3]}))
    assert _run_repeats(stopped, None, "multi") == [3]
    (stopped / "run.json").write_text(json.dumps({"size": 64, "recipe": "multi", "shift": 0.5, "repeats_by_references": [3]}))
    with pytest.raises(MagrefInputError, match=r"3 \(the run's own.*weights nothing in recipe 'single'") as e:  # stopped, rerun as another recipe
        _run_repeats(stopped, None, "single")
    assert "pass --recipe multi" in e.value.fix and "--repeats-by-references 1" in e.value.fix and _run_repeats(stopped, [1], "single") == []
    (stopped / "dit" / "checkpoints" / "step-00000005").mkdir(parents=True)
    (stopped / "dit" / "checkpoints" / "step-00000005" / "state.json").write_text("{}")
    assert shift(stopped) == 1.0 and _run_repeats(stopped, None, "multi") == [2]  # then what the trainer read
    with pytest.raises(MagrefInputError, match="resume with --recipe multi"):
        _run_repeats(stopped, None, "single")

    def cli(*options):
        rc, _, err = run_cli("world", "train", "--out", tmp_path / "cli", "--vae", WORLD_VAE_PATH, "--recipe", "multi", "--clips", "4", "--data-only",
                             *options)
        return rc, err, yaml.safe_load((tmp_path / "cli" / "dit.yaml").read_text())["shift"]

    rc, err, written = cli()  # a resume without the option keeps the run's own
    assert rc == 0 and written == 1.0, err[-2000:]
    for bad in ("0", "inf"):
        rc, err, written = cli("--train-shift", bad)
        assert rc != 0 and "the shift must be a positive, finite number" in err and written == 1.0, err[-2000:]
    (tmp_path / "cli" / "dit" / "checkpoints" / "step-00000010").mkdir(parents=True)
    (tmp_path / "cli" / "dit" / "checkpoints" / "step-00000010" / "state.json").write_text("{}")
    rc, err, written = cli("--train-shift", "3")
    assert rc != 0 and "trained with --train-shift 1.0, not 3.0" in err and "resume without --train-shift" in err and written == 1.0, err[-2000:]


def test_source_box_layout_puts_the_reference_where_the_subject_starts(tmp_path):
    """Cut-outs from frame 0 and `p_source_boxes`: the canvas holds exactly the subject's frame-0
    pixels at their place (the miniature's in-place copy), everywhere else white."""
    import random

    from magref.composition import compose_references
    from magref.data.masking import LayoutSampler

    build_world_dataset(tmp_path / "d", 3, "train", frames=9, cutout_frame=0)
    ds = ClipDataset(tmp_path / "d")
    assert ds.manifest["settings"]["cutout_frame"] == 0
    sampler = LayoutSampler(p_drop=0.0, p_source_boxes=1.0)
    for i in range(len(ds)):
        s = ds[i]
        keep, layout = sampler(1, 64, 64, random.Random(i), [sub.box for sub in s.subjects])
        assert layout.kind == "user" and list(layout.cells[0]) == list(s.subjects[0].box)
        canvas = np.asarray(compose_references([s.subjects[0].image], 64, 64, layout=layout).canvas).astype(int)
        drawn = (canvas != 255).any(-1)
        assert drawn.sum() > 50 and np.abs(canvas[drawn] - s.frames[0].astype(int)[drawn]).max() <= 1


@pytest.mark.heavy
def test_world_train_stages_run_end_to_end(tmp_path):
    """A few steps of every stage (VAE, data, DiT), then the result generates a video."""
    from conftest import run_cli

    out = tmp_path / "w"
    rc, _, err = run_cli("world", "train", "--out", out, "--vae-steps", "2", "--decoder-steps", "2", "--subject-vae-steps", "2", "--clips", "8",
                         "--dit-steps", "2", "--batch-size", "2")
    assert rc == 0, err[-2000:]
    vae_cfg = __import__("json").loads((out / "vae" / "model" / "config.json").read_text())
    assert len(vae_cfg["latents_std"]) == 16 and vae_cfg["latents_std"] != [1.0] * 16  # measured, not defaults
    # stage 1b tunes the decoder only: the encoder, hence the transformer's latent space, is unchanged
    from safetensors.torch import load_file

    before, after = (load_file(out / "vae" / d / "diffusion_pytorch_model.safetensors") for d in ("model", "tuned"))
    assert all((before[k] == after[k]).all() for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any((before[k] != after[k]).any() for k in before if k.startswith("decoder."))
    # stage 1c tunes the whole VAE, so it measures the latent statistics again; the run and its
    # transformer use that last stage
    subjects = load_file(out / "vae" / "subjects" / "diffusion_pytorch_model.safetensors")
    assert any((after[k] != subjects[k]).any() for k in after if k.startswith("encoder."))
    stats = [__import__("json").loads((out / "vae" / d / "config.json").read_text())["latents_std"] for d in ("tuned", "subjects")]
    assert stats[0] != stats[1]
    base_vae = load_file(out / "base" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(base_vae[k], subjects[k]) for k in subjects)
    ref = tmp_path / "ref.png"
    render_subject(identity(5), 48).save(ref)
    rc, _, err = run_cli("generate", "--model", out / "dit" / "final", "--prompt", "a red triangle moves", "--ref", ref,
                         "--height", "64", "--width", "64", "--frames", "13", "--steps", "2", "--out", tmp_path / "v.mp4")
    assert rc == 0, err[-2000:]

    # exported as the bundled model is: bf16 except the modules diffusers keeps in float32, with
    # the settings it was trained for, which `magref generate` uses when the user gives none
    import json

    from safetensors import safe_open

    from magref.world.train import pipeline_from_run

    with pytest.raises(MagrefInputError, match="step 7"):
        pipeline_from_run(out, step=7)
    import shutil

    ckpts = out / "dit" / "checkpoints"
    shutil.copytree(ckpts / "step-0000002", ckpts / "step-0000004.part")  # a save in progress is no checkpoint
    (ckpts / "step-0000004.part" / "ema.safetensors").write_bytes(b"half written")
    with pytest.raises(MagrefInputError, match=r"step 4 \(have: 2\)"):
        pipeline_from_run(out, step=4)
    assert pipeline_from_run(out).transformer is not None  # the latest complete one, not the save in progress
    shutil.rmtree(ckpts / "step-0000004.part")
    exported = tmp_path / "exported"
    rc, _, err = run_cli("world", "export", out, exported, "--step", "2")
    assert rc == 0, err[-2000:]
    with safe_open(exported / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == "BF16" and dtypes["scale_shift_table"] == "F32"
    assert not [p for p in exported.rglob("*.json") if "_name_or_path" in p.read_text()]  # no path of the training machine
    rc, _, err = run_cli("generate", "--model", exported, "--prompt", "a red triangle moves", "--ref", ref, "--steps", "2", "--out", tmp_path / "d.mp4")
    assert rc == 0, err[-2000:]
    meta = json.loads((tmp_path / "d.json").read_text())
    assert (meta["output"]["height"], meta["output"]["width"], meta["output"]["frames"]) == (64, 64, 9)
    assert meta["settings"]["negative_prompt"] == "" and meta["settings"]["steps"] == 2 and meta["settings"]["fps"] == 8.0

    # a first save cut short leaves only a `.part` folder: nothing to resume, so a rerun trains from the start
    shutil.rmtree(ckpts)
    (ckpts / "step-0000001.part").mkdir(parents=True)
    rc, _, err = run_cli("world", "train", "--out", out, "--vae-steps", "2", "--decoder-steps", "2", "--subject-vae-steps", "2", "--clips", "8",
                         "--dit-steps", "2", "--batch-size", "2")
    assert rc == 0, err[-2000:]
    assert [p.name for p in ckpts.iterdir()] == ["step-0000002"] and (ckpts / "step-0000002" / "state.json").is_file()


def test_world_train_with_a_4x_vae_gives_16x16_latents_end_to_end(tmp_path, monkeypatch):
    """`--vae-stride 4`: one VAE stage (subject-weighted, annealed, probing its identity ceiling)
    and no 8x repair stages; the transformer takes 36 channels over 16x16 latents, and the model
    generates at 64x64 with masks in 4-pixel cells."""
    import json

    from conftest import run_cli

    import magref.world.train as wt

    monkeypatch.setattr(wt, "CEILING_CLIPS", 3)
    out = tmp_path / "w4"
    rc, _, err = run_cli("world", "train", "--out", out, "--vae-stride", "4", "--vae-steps", "2", "--clips", "8", "--dit-steps", "2", "--batch-size", "2")
    assert rc == 0, err[-2000:]
    vae_cfg = json.loads((out / "vae" / "model" / "config.json").read_text())
    assert vae_cfg["scale_factor_spatial"] == 4 and vae_cfg["dim_mult"] == [1, 2, 4]
    assert not (out / "vae" / "tuned").exists() and not (out / "vae" / "subjects").exists()
    metrics = [json.loads(line) for line in (out / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["ceiling"]) == {"top-1", "top-1, 1 subjects", "top-1, 2 subjects", "top-1, 3 subjects"}
    tcfg = json.loads((out / "base" / "transformer" / "config.json").read_text())
    assert tcfg["in_channels"] == 36 and tcfg["out_channels"] == 16
    from magref.world.train import pipeline_from_run

    pipe = pipeline_from_run(out)
    res = pipe(prompt="a ball moves", references=[render_subject(identity(5), 48)], height=64, width=64, num_frames=13,
               num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert res.frames.shape == (1, 16, 4, 16, 16) and res.composition.latent_mask.shape == (16, 16)


def test_vae_clips_can_open_with_their_reference_canvas():
    """A quarter of the 4x VAE's clips start with the subjects' canvas (sprites on white), the
    condition MAGREF encodes; its mask marks the sprites' boxes."""
    from magref.world.train import world_frames

    x, m = world_frames(np.random.default_rng(3), 3, 13, with_masks=True, p_canvas=1.0)
    first = (x[:, :, 0] + 1) * 127.5  # (B, 3, H, W)
    outside = m[:, 0, 0] == 0
    assert torch.all(first.permute(0, 2, 3, 1)[outside] > 254)  # white around the references
    assert (m[:, 0, 0].flatten(1).sum(1) > 100).all() and not torch.equal(x[:, :, 0], x[:, :, 1])
    y, _ = world_frames(np.random.default_rng(3), 3, 13, with_masks=True, p_canvas=0.0)
    assert not torch.equal(x[0, :, 0], y[0, :, 0]) and torch.equal(x[0, :, 1:], y[0, :, 1:])  # the rest of the clip unchanged


def test_evaluation_recognises_ground_truth_clips():
    """Truth-known: rendered clips of held-out identities are identified and their motion read."""
    from magref.world.evaluate import eval_cases, score_video

    scores = []
    for case in eval_cases(1, 12):
        clip = make_clip([identity(i) for i in case.ids], np.random.default_rng(case.seed), frames=13, motions=case.motions, scene=case.scene)
        scores.append(score_video(clip.frames, case))
    top1 = np.mean([s["identity_top1"] for s in scores])
    motion = np.mean([s["motion_accuracy"] for s in scores])
    assert top1 >= 0.75, top1
    assert motion >= 0.6, motion
    # a clip of someone else is not taken for the referenced identity
    case = eval_cases(1, 1, seed=5)[0]
    other = [i for i in range(5, 400, 5) if identity(i).kind == identity(case.ids[0]).kind and i != case.ids[0]][0]
    wrong = make_clip([identity(other)], np.random.default_rng(0), frames=13, motions=case.motions, scene=case.scene)
    assert score_video(wrong.frames, case)["identity_margin"] < score_video(
        make_clip([identity(case.ids[0])], np.random.default_rng(0), frames=13, motions=case.motions, scene=case.scene).frames, case)["identity_margin"]


def test_learnt_identity_test_recognises_held_out_subjects_through_the_vae():
    """The shipped identity classifier, on fresh clips (seeds it was not trained on) of 1-3
    held-out subjects: it names the true subject against 7 of its kind in the world's rendering
    and in that rendering decoded by the shipped VAE, and a clip of someone else is not taken for
    the referenced identity."""
    from diffusers import AutoencoderKLWan

    from magref.models import WORLD_VAE_PATH
    from magref.world.evaluate import eval_cases
    from magref.world.identify import ceiling, identify_video, identity_hit, load_identifier

    judge = load_identifier()
    vae = AutoencoderKLWan.from_pretrained(WORLD_VAE_PATH, torch_dtype=torch.float32)
    tops = ceiling(judge, vae, clips=24, seed=5)
    print(f"learnt identity test on fresh clips: {tops}")
    assert tops["rendered top-1"] >= 0.8 and tops["decoded top-1"] >= 0.7, tops
    case = eval_cases(1, 1, seed=5)[0]
    me = case.ids[0]
    others = [i for i in identity_ids("heldout") if identity(i).kind == identity(me).kind and i != me][:7]
    mine = make_clip([identity(me)], np.random.default_rng(0), frames=13, motions=case.motions, scene=case.scene).frames
    theirs = make_clip([identity(others[0])], np.random.default_rng(0), frames=13, motions=case.motions, scene=case.scene).frames
    assert identity_hit(identify_video(judge, mine), me, others)[0]
    assert identity_hit(identify_video(judge, theirs), me, others)[1] < identity_hit(identify_video(judge, mine), me, others)[1]


@pytest.mark.parametrize("size", [64, 128])
def test_identifier_training_writes_a_loadable_model_without_machine_paths(tmp_path, size):
    from magref.models import WORLD_VAE_PATH
    from magref.world.identify import load_identifier, train_identifier, world_frames

    report = train_identifier(tmp_path / "id", WORLD_VAE_PATH, clips=2, steps=2, batch=4, ceiling_clips=2, log=lambda *_: None, size=size)
    assert report["size"] == size
    frames, labels = world_frames(2, 0, size=size)  # made at `size`, seen at 64 px, the same subjects visible
    assert frames.shape[1:] == (64, 64, 3) and labels.any(1).all()
    judge = load_identifier(tmp_path / "id")
    assert judge.ids == identity_ids("heldout")
    # overall and by subject count (2 clips: one of 1 subject, one of 2)
    assert set(report["ceiling"]) == {f"{w} top-1{n}" for w in ("rendered", "decoded") for n in ("", ", 1 subjects", ", 2 subjects")}
    assert "/" not in json.loads((tmp_path / "id" / "config.json").read_text())["vae"]
    with pytest.raises(MagrefInputError, match="No identity classifier"):
        load_identifier(tmp_path / "nothing")


def test_vae_stage_resumes_from_its_checkpoint(tmp_path):
    """The VAE stage reloads its own checkpoint (weights_only, numpy LR values allowed)."""
    import torch

    from magref.world.train import load_state, train_vae

    logs = []
    train_vae(tmp_path, 2, log=logs.append)
    assert load_state(tmp_path / "vae" / "state.pt")["step"] == 2
    train_vae(tmp_path, 3, log=logs.append)
    assert "vae: resumed at step 2" in logs and load_state(tmp_path / "vae" / "state.pt")["step"] == 3
    torch.save({"x": np.float64(1.5)}, tmp_path / "old.pt")  # the format older runs wrote
    assert load_state(tmp_path / "old.pt")["x"] == 1.5


def test_vae_stage_lr_is_constant_then_anneals_to_a_tenth():
    """The subjects stage keeps its LR, then anneals it by a cosine over its last steps; with no
    annealing length the whole stage anneals (stage 1b)."""
    from magref.world.train import cosine_to_tenth

    f = cosine_to_tenth(1000, 300)
    assert f(0) == f(699) == 1.0
    tail = [f(s) for s in range(700, 1001)]
    assert all(a > b for a, b in zip(tail, tail[1:])) and tail[-1] == pytest.approx(0.1) and f(2000) == pytest.approx(0.1)
    whole = cosine_to_tenth(100)
    assert whole(0) == 1.0 and whole(50) == pytest.approx(0.55) and whole(100) == pytest.approx(0.1)
    assert cosine_to_tenth(100, 0)(100) == 1.0


def test_world_ablation_runs_reuse_vae_and_data(tmp_path):
    from conftest import run_cli

    full = tmp_path / "full"
    assert run_cli("world", "train", "--out", full, "--vae-steps", "2", "--decoder-steps", "1", "--subject-vae-steps", "1", "--clips", "6",
                   "--dit-steps", "2", "--batch-size", "2")[0] == 0
    for ablation in ("no-mask", "tokens"):
        out = tmp_path / ablation
        rc, _, err = run_cli("world", "train", "--out", out, "--vae-steps", "2", "--clips", "6", "--dit-steps", "2", "--batch-size", "2",
                             "--ablation", ablation, "--reuse-from", full)
        assert rc == 0, err[-2000:]
        assert (out / "vae").resolve() == (full / "vae").resolve()
        index = __import__("json").loads((out / "dit" / "final" / "model_index.json").read_text())
        assert index["conditioning"] == ("tokens" if ablation == "tokens" else "channel") and index["mask_channels"] == (ablation != "no-mask")


def test_world_evaluate_scores_generated_and_true_videos_and_resumes(tmp_path):
    """`world evaluate`: every (model, case, seed) is generated, scored against the truth, saved;
    the table and the picture sheets are written; a rerun generates nothing again."""
    import json

    from conftest import run_cli

    args = ["world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path, "--subjects", "1", "2", "--cases", "1",
            "--seeds", "0", "--steps", "1"]
    rc, _, err = run_cli(*args)
    assert rc == 0, err[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["case"]) for r in rows) == [("ground truth", "1s_0"), ("ground truth", "2s_0"), ("tiny", "1s_0"), ("tiny", "2s_0")]
    truth = {r["case"]: r for r in rows if r["model"] == "ground truth"}
    noise = {r["case"]: r for r in rows if r["model"] == "tiny"}
    assert truth["1s_0"]["identity_top1"] == 1.0 and truth["1s_0"]["identity_margin"] > noise["1s_0"]["identity_margin"]
    assert truth["1s_0"]["identity_learnt_margin"] > noise["1s_0"]["identity_learnt_margin"]  # the learnt test scores every video too
    table = (tmp_path / "table.md").read_text()
    assert "| ground truth | 1 |" in table and "| tiny | 2 |" in table and "identity top-1 (learnt)" in table
    assert (tmp_path / "sheets" / "2s_0.png").is_file() and (tmp_path / "videos" / "tiny" / "2s_0_seed0.mp4").is_file()
    rc, _, err = run_cli(*args)
    assert rc == 0 and len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    rc, _, err = run_cli("world", "evaluate", "--model", "tiny", "--out", tmp_path)
    assert rc == 2 and "NAME=SPEC" in err


def test_world_train_starts_from_the_bundled_vae(tmp_path):
    """--vae skips the VAE stages (the serial ~45 min of a run): the run's VAE is the given one,
    in float32, and no VAE training state is written."""
    from safetensors.torch import load_file

    from conftest import run_cli
    from magref.models import WORLD_VAE_PATH

    out = tmp_path / "w"
    rc, _, err = run_cli("world", "train", "--out", out, "--vae", WORLD_VAE_PATH, "--clips", "4", "--dit-steps", "1", "--batch-size", "2")
    assert rc == 0, err[-2000:]
    assert not any((out / "vae").glob("*state.pt"))
    given = load_file(WORLD_VAE_PATH / "diffusion_pytorch_model.safetensors")
    for stage in ("model", "tuned", "subjects"):
        got = load_file(out / "vae" / stage / "diffusion_pytorch_model.safetensors")
        assert set(got) == set(given) and all(got[k].dtype == torch.float32 and torch.equal(got[k], given[k].float()) for k in given)

    # a run whose data predates the per-frame masks and the kind captions gets both on resume, and
    # keeps its encoding cache
    from magref.data.shards import MANIFEST, write_shard

    data = ClipDataset(out / "data")
    assert data.manifest["world"]["captions"] == "kind" and not any(c in data[i].caption for i in range(len(data)) for c in PALETTE)
    samples = [data[i] for i in range(len(data))]
    for sample in samples:
        sample.masks = None
        sample.caption = caption([identity(j) for j in sample.meta["identities"]], sample.meta["motions"], sample.meta["scene"], "appearance")
    write_shard(out / "data" / data.manifest["shards"][0]["file"], samples)
    manifest = json.loads((out / "data" / MANIFEST).read_text())
    del manifest["world"]["captions"]  # as written before the option
    (out / "data" / MANIFEST).write_text(json.dumps(manifest))
    assert ClipDataset(out / "data").masks(0) is None and any(c in ClipDataset(out / "data")[0].caption for c in PALETTE)
    cache = sorted((out / "data" / "encodings").glob("*/part-*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    rc, _, err = run_cli("world", "train", "--out", out, "--vae", WORLD_VAE_PATH, "--clips", "4", "--dit-steps", "2", "--batch-size", "2")
    assert rc == 0, err[-2000:]
    assert ClipDataset(out / "data").masks(0) is not None and [p.stat().st_mtime_ns for p in cache] == stamps
    again = ClipDataset(out / "data")
    assert again.manifest["world"]["captions"] == "kind"
    assert [again[i].caption for i in range(len(again))] == [
        caption([identity(j) for j in s.meta["identities"]], s.meta["motions"], s.meta["scene"], "kind") for s in samples]


def test_world_train_data_only_leaves_the_cache_to_encode_and_trains_on_it_when_run_again(tmp_path):
    """--data-only stops at the clips and dit.yaml, so the cache can be built by many processes
    (`magref encode`); the next run trains on that cache without encoding anything again."""
    from conftest import run_cli
    from magref.models import WORLD_VAE_PATH

    out = tmp_path / "w"
    args = ("world", "train", "--out", out, "--vae", WORLD_VAE_PATH, "--clips", "4", "--dit-steps", "1", "--batch-size", "2")
    rc, out_text, err = run_cli(*args, "--data-only")
    assert rc == 0, err[-2000:]
    assert (out / "dit.yaml").is_file() and len(ClipDataset(out / "data")) == 4 and "magref encode" in out_text
    assert not (out / "dit").exists() and not (out / "data" / "encodings").exists()
    rc, encoded, err = run_cli("encode", out / "dit.yaml")
    assert rc == 0 and "encoded:" in encoded, err[-2000:]
    cache = sorted((out / "data" / "encodings").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    rc, trained, err = run_cli(*args)
    assert rc == 0, err[-2000:]
    assert (out / "dit" / "final").is_dir() and "part(s)" not in trained
    assert len(cache) >= 2 and [p.stat().st_mtime_ns for p in sorted((out / "data" / "encodings").rglob("*.safetensors"))] == stamps


def test_world_evaluate_case_seed_draws_fresh_cases_and_keeps_them_apart(tmp_path):
    """--case-seed N scores cases no table was made from; results record it, and a folder of one
    case seed refuses another (the same case names would be other cases)."""
    from magref.world.evaluate import eval_cases, evaluate

    assert [c.ids for c in eval_cases(2, 4, seed=5)] != [c.ids for c in eval_cases(2, 4, seed=2)]
    evaluate({}, tmp_path / "e5", subjects=(1,), cases=2, seeds=(0,), case_seed=5, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "e5" / "results.jsonl").read_text().splitlines()]
    assert {r["case_seed"] for r in rows} == {5} and [r["ids"] for r in rows] == [c.ids for c in eval_cases(1, 2, seed=5)]
    assert json.loads((tmp_path / "e5" / "summary.json").read_text())["settings"]["case_seed"] == 5
    with pytest.raises(MagrefInputError, match="case seed 5"):
        evaluate({}, tmp_path / "e5", subjects=(1,), cases=2, seeds=(0,), case_seed=2, log=lambda *a: None)


def test_world_evaluate_keeps_one_guidance_and_step_count_per_folder(tmp_path):
    """A rerun resumes a results folder; one with another guidance or step count would mix two
    settings in one table (guidance moves identity and motion apart), so it is refused, while the
    ground truth, made without sampling, does not pin them."""
    from magref.world.evaluate import evaluate

    quiet = dict(subjects=(1,), cases=1, seeds=(0,), log=lambda *a: None)
    evaluate({}, tmp_path / "e", guidance=5.0, **quiet)  # ground truth only
    evaluate({}, tmp_path / "e", guidance=1.0, **quiet)
    made = {"model": "m", "spec": "some/model", "case": "1s_0", "seed": 0, "case_seed": 2, "size": 64, "steps": 25, "guidance": 5.0}
    with open(tmp_path / "e" / "results.jsonl", "a") as f:
        f.write(json.dumps(made) + "\n")
    with pytest.raises(MagrefInputError, match="guidance 5.0"):
        evaluate({}, tmp_path / "e", guidance=1.0, **quiet)
    with pytest.raises(MagrefInputError, match="steps 25"):
        evaluate({}, tmp_path / "e", guidance=5.0, steps=10, **quiet)


def test_world_evaluate_shift_reaches_the_sampler_and_is_kept_per_folder(tmp_path):
    """--shift: the sampler's flow shift (never tuned at 128 px) is what the videos are made with,
    recorded per video; a folder made with the model's own shift refuses another."""
    from conftest import run_cli

    videos = {}
    for shift in ("1", "20"):
        rc, _, err = run_cli("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / shift, "--subjects", "1", "--cases", "1",
                             "--seeds", "0", "--steps", "3", "--no-truth", "--shift", shift)
        assert rc == 0, err[-2000:]
        (row,) = [json.loads(line) for line in (tmp_path / shift / "results.jsonl").read_text().splitlines()]
        assert row["shift"] == float(shift)
        videos[shift] = (tmp_path / shift / "videos" / "tiny" / "1s_0_seed0.mp4").read_bytes()
    assert videos["1"] != videos["20"]
    from magref.world.evaluate import evaluate

    with pytest.raises(MagrefInputError, match="shift 1.0, not the model's own"):
        evaluate({"tiny": "tiny-random"}, tmp_path / "1", subjects=(1,), cases=1, seeds=(0,), steps=3, truth=False, log=lambda *a: None)
    for option, bad in (("--shift", "0"), ("--shift", "nan"), ("--guidance", "0.5")):  # refused before the folder exists: nothing locked to it
        rc, _, err = run_cli("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / "bad", option, bad)
        assert rc == 2 and option[2:] in err.lower() and not (tmp_path / "bad").exists()


def test_world_compare_pairs_videos_by_case_and_seed(tmp_path):
    """`magref world compare A B`: differences of the same (case, seed) videos, by subject count and
    overall, with the standard error of the differences; sides of other case seeds, or a folder of
    several models named by no #MODEL, are refused."""
    from conftest import run_cli

    from magref.world.evaluate import paired_differences, results_of

    def write(folder, model, values, case_seed=7):
        folder.mkdir()
        with open(folder / "results.jsonl", "w") as f:
            for (case, seed, k), v in values.items():
                f.write(json.dumps({"model": model, "case": case, "seed": seed, "subjects": k, "case_seed": case_seed, "ids": [k, seed],
                                    "identity_learnt_top1": v, "motion_accuracy": 0.5}) + "\n")

    a = {("1s_0", 0, 1): 1.0, ("1s_1", 0, 1): 1.0, ("2s_0", 0, 2): 0.5, ("2s_1", 0, 2): 0.5, ("2s_1", 1, 2): 1.0}
    b = {("1s_0", 0, 1): 0.0, ("1s_1", 0, 1): 1.0, ("2s_0", 0, 2): 0.5, ("2s_1", 0, 2): 0.0}  # ("2s_1", 1) only in a: unpaired
    write(tmp_path / "a", "m@1", a)
    write(tmp_path / "b", "m@2", b)
    d = paired_differences(results_of(tmp_path / "a"), results_of(tmp_path / "b"))
    assert d[1]["identity_learnt_top1"] == pytest.approx((0.5, 0.5, 2))  # differences 1 and 0
    assert d[2]["identity_learnt_top1"] == pytest.approx((0.25, 0.25, 2))
    assert d["all"]["identity_learnt_top1"][2] == 4 and d["all"]["motion_accuracy"][:2] == (0.0, 0.0)
    # how many videos moved each way (a mean of 0 can be two flips that cancel, or none)
    assert d[1]["identity_learnt_top1_higher_lower"] == (1, 0) and d["all"]["identity_learnt_top1_higher_lower"] == (2, 0)
    back = paired_differences(results_of(tmp_path / "b"), results_of(tmp_path / "a"))
    assert back["all"]["identity_learnt_top1_higher_lower"] == (0, 2)
    rc, out, err = run_cli("world", "compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert rc == 0 and "| 1 | +0.500 ± 0.500 |" in out and "| all | +0.375" in out, err
    assert "videos higher / lower (learnt top-1) | pairs |" in out and "| 2 / 0 | 4 |" in out, out
    assert len({line.count("|") for line in out.splitlines() if line.startswith("|")}) == 1  # header, separator and rows align
    write(tmp_path / "d", "m@4", {**a, ("1s_1", 0, 1): 0.0})  # one video up, one down: a mean of 0 that is not "the same videos"
    d = paired_differences(results_of(tmp_path / "d"), results_of(tmp_path / "b"))
    assert d[1]["identity_learnt_top1"][0] == 0.0 and d[1]["identity_learnt_top1_higher_lower"] == (1, 1)
    write(tmp_path / "c", "m@3", b, case_seed=2)
    with pytest.raises(MagrefInputError, match="case seeds"):
        paired_differences(results_of(tmp_path / "a"), results_of(tmp_path / "c"))
    with open(tmp_path / "a" / "results.jsonl", "a") as f:
        f.write(json.dumps({"model": "other", "case": "1s_0", "seed": 0, "subjects": 1, "ids": [1, 0]}) + "\n")
    with pytest.raises(MagrefInputError, match="several models"):
        results_of(tmp_path / "a")
    assert len(results_of(tmp_path / "a", "m@1")) == 5
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_text("")
    with pytest.raises(MagrefInputError, match="no results"):
        results_of(tmp_path / "empty")
    other_prompts = [dict(r, prompt="A mug comes closer.") for r in results_of(tmp_path / "b")]  # e.g. another --captions
    with pytest.raises(MagrefInputError, match="prompts"):
        paired_differences(results_of(tmp_path / "a", "m@1"), other_prompts)
    rc, out, err = run_cli("world", "compare", f"{tmp_path / 'a'}#m@1", str(tmp_path / "b"))
    assert rc == 0 and "| 2 | +0.250 ± 0.250 |" in out, err


def test_a_world_build_is_complete_or_has_no_manifest(tmp_path):
    """The world's builder writes its manifest last: an interrupted build is redone, never
    trained on as if complete (magref prepare, resumable, writes it per shard)."""
    from magref.data.shards import MANIFEST, ShardWriter

    writer = ShardWriter(tmp_path, {"shards": []}, 1, resumable=False)
    from magref.data.shards import Sample

    writer.add(Sample("k0", np.zeros((1, 8, 8, 3), np.uint8), "c", [], {}))
    writer.flush_if_full()
    assert (tmp_path / "shard-00000.tar").is_file() and not (tmp_path / MANIFEST).exists()
    writer.close()
    assert json.loads((tmp_path / MANIFEST).read_text())["num_samples"] == 1


def test_world_train_refuses_a_run_of_the_other_vae_stride(tmp_path, monkeypatch):
    import magref.world.train as wt
    from conftest import run_cli

    monkeypatch.setattr(wt, "CEILING_CLIPS", 3)
    out = tmp_path / "w4"
    assert run_cli("world", "train", "--out", out, "--vae-stride", "4", "--vae-steps", "1", "--vae-only")[0] == 0
    rc, _, err = run_cli("world", "train", "--out", out, "--vae-only")
    assert rc == 2 and "spatial stride 4, not 8" in err and len(err.strip().splitlines()) == 1, err
    import shutil

    shutil.rmtree(out / "vae" / "model")  # only the resumable state left: it is refused too
    rc, _, err = run_cli("world", "train", "--out", out, "--vae-only", "--vae-steps", "2")
    assert rc == 2 and "another spatial stride than 8" in err and len(err.strip().splitlines()) == 1, err
    from magref.io import folder_lock

    with folder_lock(out, ".magref-train.lock", "magref world train", "wait"):  # a run still writing: a second one there is refused
        rc, _, err = run_cli("world", "train", "--out", out, "--vae-stride", "4", "--vae-only", "--vae-steps", "2")
    assert rc == 2 and "magref world train (pid" in err and "is already writing to" in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "vae" / "model").exists()


def test_vae_stage_can_start_from_the_shipped_4x_vae(tmp_path):
    """--vae-init: the shipped 4x VAE's weights start stage 1 (here for 0 steps, so the saved VAE
    is those weights); a VAE of the other stride is refused."""
    from safetensors.torch import load_file

    from magref.models import WORLD_VAE_PATH
    from magref.world.train import train_vae

    shipped = Path(__file__).resolve().parents[1] / "src" / "magref" / "assets" / "world" / "vae4x"
    logs = []
    saved = train_vae(tmp_path / "a", 0, log=logs.append, vae_stride=4, init=shipped)
    assert any("starting from" in line for line in logs)
    a, b = load_file(saved / "diffusion_pytorch_model.safetensors"), load_file(shipped / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].float()) for k in a)
    with pytest.raises(MagrefInputError, match="not a VAE of spatial stride 4"):
        train_vae(tmp_path / "b", 0, vae_stride=4, init=WORLD_VAE_PATH)


def test_world_runs_at_128_px_from_training_to_evaluation(tmp_path):
    """--size 128 (8x8 tokens per latent frame with the shipped 8x VAE): the clips, the recorded
    run, the export's generation defaults and the evaluation's videos are all 128 px; a resume at
    another size is refused."""
    from conftest import run_cli
    from magref.io import read_video
    from magref.models import WORLD_VAE_PATH
    from magref.world.train import export_run

    out = tmp_path / "w"
    args = ["world", "train", "--out", out, "--vae", WORLD_VAE_PATH, "--clips", "3", "--dit-steps", "1", "--batch-size", "1"]
    rc, _, err = run_cli(*args, "--size", "128")
    assert rc == 0, err[-2000:]
    assert ClipDataset(out / "data")[0].frames.shape[1:3] == (128, 128)
    assert json.loads((out / "run.json").read_text())["size"] == 128
    rc, _, err = run_cli(*args)  # the default, 64
    assert rc == 2 and "128 px" in err and "--size 128" in err
    (out / "run.json").unlink()  # as a run from before run.json: its clips tell, and a refusal writes nothing
    rc, _, err = run_cli(*args)
    assert rc == 2 and "holds clips at 128 px" in err and not (out / "run.json").exists()
    (out / "run.json").write_text(json.dumps({"size": 128, "recipe": "single", "ablation": "none"}))
    rc, _, err = run_cli("world", "train", "--out", tmp_path / "ablation", "--reuse-from", out, "--ablation", "no-mask")
    assert rc == 2 and "--reuse-from" in err and "--size 128" in err
    defaults = json.loads((export_run(out, tmp_path / "export") / "generation_defaults.json").read_text())
    assert (defaults["height"], defaults["width"], defaults["guidance"]) == (128, 128, 5.0)  # the official guidance unless told
    rc, _, err = run_cli("world", "export", out, tmp_path / "export-g", "--guidance", "1.5")
    assert rc == 0, err[-2000:]
    assert json.loads((tmp_path / "export-g" / "generation_defaults.json").read_text())["guidance"] == 1.5
    rc, _, err = run_cli("world", "export", out, tmp_path / "export-g", "--guidance", "0.5")
    assert rc == 2 and "below 1" in err
    assert json.loads((tmp_path / "export-g" / "generation_defaults.json").read_text())["guidance"] == 1.5  # a refused export leaves it be
    rc, _, err = run_cli("world", "evaluate", "--model", f"w={out}", "--out", tmp_path / "e", "--subjects", "1", "--cases", "1", "--seeds", "0",
                         "--steps", "1")
    assert rc == 0, err[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "e" / "results.jsonl").read_text().splitlines()]
    assert {r["size"] for r in rows} == {128}
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["settings"]["identifier"] == "identifier128"  # the test made for 128 px
    truth = next(r for r in rows if r["model"] == "ground truth")
    assert truth["identity_learnt_top1"] == 1.0  # it recognises the true subject of a 128 px clip
    for name in ("ground_truth", "w"):
        assert read_video(tmp_path / "e" / "videos" / name / "1s_0_seed0.mp4").shape[1:3] == (128, 128)
    from PIL import Image

    assert Image.open(tmp_path / "e" / "sheets" / "1s_0.png").width >= 6 * 256  # canvas + 5 frames, each >= 256 px


def test_world_train_transformer_init_starts_from_given_weights_and_a_trained_run_keeps_its_own(tmp_path):
    """--transformer-init: the run's transformer starts from another run's weights (a lent GPU's
    packed run goes on here), recorded; unfitting weights are refused, and a run that has trained
    from one start refuses another."""
    import shutil

    from safetensors.torch import load_file, save_file

    from magref.models import WORLD_VAE_PATH
    from magref.world.train import run

    quiet = dict(log=lambda *a: None, clips=4, batch_size=2, dit_steps=1)
    run(tmp_path / "a", vae_from=WORLD_VAE_PATH, stop_after_data=True, **quiet)
    random_init = load_file(tmp_path / "a" / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    trained = {k: (v + 0.5).to(torch.bfloat16) for k, v in random_init.items()}  # as packed from a GPU: other values, bf16
    weights = tmp_path / "gpu.safetensors"
    save_file(trained, weights)
    run(tmp_path / "b", reuse_from=tmp_path / "a", transformer_init=weights, stop_after_data=True, learning_rate=2e-4, lr_schedule="cosine", **quiet)
    import yaml

    assert {k: v for k, v in yaml.safe_load((tmp_path / "b" / "dit.yaml").read_text()).items() if k in ("learning_rate", "lr_scheduler")} == {
        "learning_rate": 2e-4, "lr_scheduler": "cosine"}  # finishing a started transformer: annealed
    base = load_file(tmp_path / "b" / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert base.keys() == trained.keys() and all(torch.equal(base[k], trained[k].float()) for k in trained)
    record = json.loads((tmp_path / "b" / "base" / "init.json").read_text())["transformer_init"]
    assert record["path"] == str(weights.resolve()) and len(record["sha256"]) == 64

    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in list(trained.items())[1:]}, bad)
    with pytest.raises(MagrefInputError, match="do not fit"):
        run(tmp_path / "c", reuse_from=tmp_path / "a", transformer_init=bad, stop_after_data=True, **quiet)
    with pytest.raises(MagrefInputError, match="no transformer weights"):
        run(tmp_path / "c", reuse_from=tmp_path / "a", transformer_init=tmp_path / "nothing", stop_after_data=True, **quiet)
    short_vae = dict(vae_steps=1, decoder_steps=0, subject_vae_steps=0)  # were the check late, these would reach it in seconds
    with pytest.raises(MagrefInputError, match="do not fit"):  # refused before the VAE stages (hours from scratch) start
        run(tmp_path / "d", transformer_init=bad, stop_after_data=True, **short_vae, **quiet)
    with pytest.raises(MagrefInputError, match="do not fit"):  # weights of the channel model for the tokens ablation
        run(tmp_path / "e", transformer_init=weights, ablation="tokens", stop_after_data=True, **short_vae, **quiet)
    assert not (tmp_path / "d" / "vae").exists() and not (tmp_path / "e" / "vae").exists()
    # a start recorded before the VAE stages: a resume without the option keeps it, also from a moved file
    save_file(trained, tmp_path / "first.safetensors")
    run(tmp_path / "f", transformer_init=tmp_path / "first.safetensors", stop_after_vae=True, **short_vae, **quiet)
    assert not (tmp_path / "f" / "base").exists()
    (tmp_path / "first.safetensors").rename(tmp_path / "moved.safetensors")
    run(tmp_path / "f", transformer_init=tmp_path / "moved.safetensors", stop_after_data=True, **short_vae, **quiet)
    base = load_file(tmp_path / "f" / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(base[k], trained[k].float()) for k in trained)
    shutil.rmtree(tmp_path / "f" / "base")
    run(tmp_path / "f", stop_after_data=True, **short_vae, **quiet)  # no option: the recorded start, not a random init
    base = load_file(tmp_path / "f" / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(base[k], trained[k].float()) for k in trained)

    # the same file overwritten in place is another start: before training, the base is rebuilt from it
    save_file({k: v + 1 for k, v in trained.items()}, weights)
    run(tmp_path / "b", transformer_init=weights, stop_after_data=True, **quiet)
    rebuilt = load_file(tmp_path / "b" / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(rebuilt[k], (trained[k] + 1).float()) for k in trained)

    ckpt = tmp_path / "b" / "dit" / "checkpoints" / "step-0000001"  # b has trained from those weights
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    stamp = (tmp_path / "b" / "base" / "model_index.json").stat().st_mtime_ns
    for other in (tmp_path / "a" / "base", bad):  # other weights, also ones that would not even fit
        with pytest.raises(MagrefInputError, match="has trained its transformer from"):
            run(tmp_path / "b", transformer_init=other, stop_after_data=True, **quiet)
    save_file({k: v + 1 for k, v in trained.items()}, tmp_path / "copy.safetensors")  # the same weights elsewhere: the same start
    for same in (None, tmp_path / "copy.safetensors"):  # a resume need not repeat the option; the base stays as it is
        run(tmp_path / "b", transformer_init=same, stop_after_data=True, **quiet)
        assert (tmp_path / "b" / "base" / "model_index.json").stat().st_mtime_ns == stamp


def test_transformer_init_grows_a_shallower_transformer_into_a_deeper_one_that_computes_the_same(tmp_path):
    """Weights of a 2-block transformer start a 5-block one of the same width: its blocks are
    copies (the extra ones with zeroed branch outputs), so the deeper model's first prediction is
    the shallower one's and training goes on from there; deeper or wider weights are refused."""
    from safetensors.torch import save_file

    from magref.world.train import load_transformer_init, miniature_components

    small = miniature_components(layers=2, heads=2)["transformer"].eval()
    with torch.no_grad():  # a trained model's branches are not zero: give every output projection weight
        for block in small.blocks:
            for lin in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
                lin.weight.normal_(0, 0.05), lin.bias.normal_(0, 0.05)
    save_file(small.state_dict(), tmp_path / "small.safetensors")
    deep = miniature_components(seed=1, layers=5, heads=2)["transformer"].eval()
    load_transformer_init(deep, tmp_path / "small.safetensors")
    assert torch.equal(deep.blocks[1].attn1.to_q.weight, small.blocks[0].attn1.to_q.weight)  # a copy, not a fresh block
    assert not deep.blocks[1].ffn.net[2].weight.any() and deep.blocks[3].ffn.net[2].weight.equal(small.blocks[1].ffn.net[2].weight)
    cfg = small.config
    x, t = torch.randn(1, cfg.in_channels, 2, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0])
    text, image = torch.randn(1, 6, cfg.text_dim), torch.randn(1, 4, cfg.image_dim)
    with torch.no_grad():
        want = small(x, t, text, encoder_hidden_states_image=image).sample
        got = deep(x, t, text, encoder_hidden_states_image=image).sample
    assert want.abs().mean() > 0.1 and torch.allclose(got, want, atol=1e-5)

    save_file(deep.state_dict(), tmp_path / "deep.safetensors")
    for target, weights in ((miniature_components(layers=2, heads=2), "deep"), (miniature_components(layers=5, heads=1), "small")):
        with pytest.raises(MagrefInputError, match="do not fit"):
            load_transformer_init(target["transformer"], tmp_path / f"{weights}.safetensors")


def test_world_train_transformer_size_is_chosen_and_kept(tmp_path):
    """--dit-layers / --dit-heads size the transformer (width 64 x heads); the defaults are the
    shipped miniature's; a run keeps its size, and a size of 0 is refused."""
    from magref.models import WORLD_VAE_PATH
    from magref.world.train import miniature_components, run

    shipped = json.loads((Path(WORLD_VAE_PATH).parent / "transformer" / "config.json").read_text())
    default = dict(miniature_components()["transformer"].config)
    keys = [k for k in shipped if not k.startswith("_")]
    assert json.loads(json.dumps({k: default[k] for k in keys})) == {k: shipped[k] for k in keys}  # the shipped architecture
    quiet = dict(log=lambda *a: None, clips=4, batch_size=2, dit_steps=1, stop_after_data=True)
    run(tmp_path / "a", vae_from=WORLD_VAE_PATH, dit_layers=2, dit_heads=3, **quiet)
    config = json.loads((tmp_path / "a" / "base" / "transformer" / "config.json").read_text())
    assert (config["num_layers"], config["num_attention_heads"], config["ffn_dim"], config["added_kv_proj_dim"]) == (2, 3, 576, 192)
    with pytest.raises(MagrefInputError, match="has 2 layers and 3 heads, not 6 and 4"):
        run(tmp_path / "a", **quiet)
    with pytest.raises(MagrefInputError, match="at least one"):
        run(tmp_path / "b", vae_from=WORLD_VAE_PATH, dit_layers=0, **quiet)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_world_train_data_seed_draws_other_clips_and_a_run_keeps_its_own(tmp_path):
    """--data-seed gives new training clips (more data without re-encoding the old); a run's
    folder refuses another seed instead of training on clips it was not asked for."""
    from conftest import run_cli
    from magref.models import WORLD_VAE_PATH

    base = ("world", "train", "--vae", WORLD_VAE_PATH, "--clips", "3", "--dit-steps", "1", "--batch-size", "2", "--data-only")
    for seed in (0, 1):
        rc, _, err = run_cli(*base, "--out", tmp_path / f"s{seed}", "--data-seed", str(seed))
        assert rc == 0, err[-2000:]
    a, b = ClipDataset(tmp_path / "s0" / "data"), ClipDataset(tmp_path / "s1" / "data")
    assert a.manifest["world"]["seed"] == 0 and b.manifest["world"]["seed"] == 1
    assert not np.array_equal(a[0].frames, b[0].frames) and a[0].frames.shape == b[0].frames.shape
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").rglob("*") if p.is_file()}
    rc, _, err = run_cli(*base, "--out", tmp_path / "s1")
    assert rc != 0 and "data seed 1" in err and "--data-seed 1" in err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").rglob("*") if p.is_file()} == written  # refused before any write
    # an ablation that reuses the run's clips is held to their seed too
    rc, _, err = run_cli(*base, "--out", tmp_path / "abl", "--reuse-from", tmp_path / "s1", "--ablation", "no-mask")
    assert rc != 0 and "--data-seed 1" in err and not (tmp_path / "abl" / "data").exists()


def test_world_train_identities_draw_more_training_looks_and_never_a_held_out_one(tmp_path):
    """--train-identities N: the first N training ids of every unique look (the default 320 are the
    split's), none held out and none looking like a held-out identity; the clips say so in their
    keys and manifest, and a run's folder refuses another count, or one out of range, before writing."""
    from conftest import run_cli
    from magref.models import WORLD_VAE_PATH
    from magref.world.identities import MAX_TRAIN_IDENTITIES

    assert identity_ids("train", 320) == identity_ids("train")
    more = identity_ids("train", MAX_TRAIN_IDENTITIES)
    held = {json.dumps(identity(i).params, sort_keys=True) for i in identity_ids("heldout")}
    assert len(more) == MAX_TRAIN_IDENTITIES > 800 and not set(more) & set(identity_ids("heldout"))
    assert not any(json.dumps(identity(i).params, sort_keys=True) in held for i in more)
    with pytest.raises(MagrefInputError, match="outside 1.."):
        identity_ids("train", MAX_TRAIN_IDENTITIES + 1)
    with pytest.raises(ValueError):
        identity_ids("heldout", 10)
    base = ("world", "train", "--vae", WORLD_VAE_PATH, "--clips", "12", "--dit-steps", "1", "--batch-size", "2", "--data-only")
    rc, _, err = run_cli(*base, "--out", tmp_path / "w", "--train-identities", str(MAX_TRAIN_IDENTITIES))
    assert rc == 0, err[-2000:]
    ds = ClipDataset(tmp_path / "w" / "data")
    assert ds.manifest["world"]["identities"] == MAX_TRAIN_IDENTITIES and ds[0].key.startswith(f"train{MAX_TRAIN_IDENTITIES}_")
    drawn = {i for k in range(len(ds)) for i in ds[k].meta["identities"]}
    assert max(drawn) >= 400 and not drawn & set(identity_ids("heldout"))  # 12 clips of 1 subject from 819: some beyond the first 400 ids
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()}
    for count, says in (("320", f"--train-identities {MAX_TRAIN_IDENTITIES}"), (str(MAX_TRAIN_IDENTITIES + 1), "outside 1..")):
        rc, _, err = run_cli(*base, "--out", tmp_path / "w", "--train-identities", count)
        assert rc != 0 and says in err, err[-2000:]
    rc, _, err = run_cli(*base, "--out", tmp_path / "x", "--train-identities", "0")
    assert rc != 0 and "outside 1..819" in err and not (tmp_path / "x" / "data").exists()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()} == written  # refused before any write


def test_tracker_training_writes_a_loadable_model_whose_maps_follow_the_masks(tmp_path):
    """`world tracker`: cell masks are the subjects' shares of each cell as the 64 px frame shows
    them; the loss weighs a clip's own identities' maps as much as the 77 empty ones; a trained
    tracker loads and returns one (x, y, area) per frame, nan where it sees no cell of the subject."""
    from magref.models import WORLD_VAE_PATH
    from magref.world.track import cell_masks, load_tracker, targets, track, tracker_loss, train_tracker, world_tracks

    masks = np.zeros((1, 2, 128, 128), bool)
    masks[0, 1, :16, 8:16] = True  # two cells (of 8x8 px at 128) in the top row, the second frame only
    cells = cell_masks(masks, 128)
    assert cells.shape == (1, 2, 16, 16) and cells[0, 0].max() == 0 and cells[0, 1, :2, 1].tolist() == [255, 255] and cells[0, 1].sum() == 2 * 255
    x, cols, m = world_tracks(3, 0, size=128)
    assert x.shape == (39, 64, 64, 3) and cols.shape == (39, 3) and m.shape == (39, 3, 16, 16)
    assert all((m[f, k].max() > 0) <= (cols[f, k] >= 0) for f in range(39) for k in range(3))  # masks only where a subject is
    target, shown = targets(cols, m, 80)
    assert shown.sum(1).tolist() == (cols >= 0).sum(1).tolist() and target[~shown].max() == 0
    logits = torch.full((39, 80, 16, 16), -8.0)
    empty_everywhere = tracker_loss(logits, target, shown)
    logits[shown] = torch.logit(target[shown].clamp(1e-4, 1 - 1e-4))
    assert tracker_loss(logits, target, shown) < 0.5 * empty_everywhere  # empty maps alone do not satisfy it

    report = train_tracker(tmp_path / "t", WORLD_VAE_PATH, clips=2, steps=2, batch=4, ceiling_clips=3, log=lambda *_: None, size=64)
    assert {"decoded, learnt, 1 subjects", "rendered, colour, 3 subjects"} <= set(report["ceiling"])
    assert "/" not in json.loads((tmp_path / "t" / "config.json").read_text())["vae"]
    tracker = load_tracker(tmp_path / "t")
    assert tracker.size == 64 and track(tracker, x[:13], tracker.ids[0]).shape == (13, 3)
    # the trajectory of a map: x from its columns, y from its rows, as evaluate.trajectory reads a frame
    from magref.world.evaluate import classify_motion

    maps = torch.full((9, 80, 16, 16), -9.0)
    for f in range(8):
        maps[f, 0, 2:4, 2 + f : 5 + f] = 9.0  # a 2x3-cell blob in the top rows, moving right; frame 8 shows nothing
    tracker.forward = lambda inp: maps[: len(inp)]
    traj = track(tracker, np.zeros((9, 64, 64, 3), np.uint8), tracker.ids[0])
    assert traj[0, 0] == pytest.approx(3.5 / 16) and traj[0, 1] == pytest.approx(3 / 16) and traj[0, 2] == pytest.approx(6 / 256, rel=1e-3)
    assert np.isnan(traj[8, :2]).all() and traj[8, 2] == 0 and classify_motion(traj) == "moves from left to right"
    with pytest.raises(MagrefInputError, match="No subject tracker"):
        load_tracker(tmp_path / "nothing")
    from magref.world.identify import IDENTIFIER_PATHS

    with pytest.raises(MagrefInputError, match="another model"):
        load_tracker(IDENTIFIER_PATHS[128])


@pytest.mark.heavy
def test_learnt_motion_test_reads_held_out_subjects_motions_through_the_vae():
    """The shipped tracker (128 px videos) on fresh clips it was not trained on: it reads the
    motions of 1-3 held-out subjects from the world's rendering and from that rendering decoded by
    the shipped VAE far above chance (0.2) and above the colour tracker where the VAE defeats that;
    a clip whose subjects stand still, or of other identities, is not read as the caption's motion."""
    from diffusers import AutoencoderKLWan

    from magref.models import WORLD_VAE_PATH
    from magref.world.evaluate import eval_cases, learnt_motion
    from magref.world.track import ceiling, tracker_for

    tracker = tracker_for(128)
    assert tracker is not None and tracker_for(64) is None
    vae = AutoencoderKLWan.from_pretrained(WORLD_VAE_PATH, torch_dtype=torch.float32)
    c = ceiling(tracker, vae, clips=24, seed=5)
    learnt = np.mean([c[f"decoded, learnt, {n} subjects"] for n in (1, 2, 3)])
    colour = np.mean([c[f"decoded, colour, {n} subjects"] for n in (1, 2, 3)])
    assert np.mean([c[f"rendered, learnt, {n} subjects"] for n in (1, 2, 3)]) >= 0.7 and learnt >= 0.6 and learnt > colour + 0.1, c
    still, others, moving = [], [], []
    for case in eval_cases(1, 10, seed=5):
        clip = make_clip([identity(i) for i in case.ids], np.random.default_rng(case.seed), frames=13, height=128, width=128, motions=case.motions,
                         scene=case.scene)
        moving.append(learnt_motion(clip.frames[4:], case, tracker)["motion_learnt_accuracy"])
        still.append(learnt_motion(np.repeat(clip.frames[6:7], 9, 0), case, tracker)["motion_learnt_accuracy"])
        stranger = [i for i in identity_ids("heldout") if identity(i).kind != identity(case.ids[0]).kind][0]
        other = make_clip([identity(stranger)], np.random.default_rng(case.seed), frames=13, height=128, width=128, motions=case.motions,
                          scene=case.scene)
        others.append(learnt_motion(other.frames[4:], case, tracker)["motion_learnt_accuracy"])
    assert np.mean(moving) >= 0.8 and np.mean(still) <= 0.4 and np.mean(others) <= 0.4, (moving, still, others)


def test_world_rescore_adds_the_learnt_motion_test_from_the_kept_videos(tmp_path):
    """`world rescore`: rows written before the learnt motion test get it from their videos, with
    the test's name; a folder scored by one test refuses another, a test of another video size is
    refused, and a folder without its videos (e.g. merged results) is refused, naming what is missing."""
    import shutil

    from conftest import run_cli

    from magref.io import read_video
    from magref.models import WORLD_VAE_PATH
    from magref.world.evaluate import _read_results, eval_cases, learnt_motion
    from magref.world.track import load_tracker, train_tracker

    train_tracker(tmp_path / "t", WORLD_VAE_PATH, clips=2, steps=2, batch=4, ceiling_clips=1, log=lambda *_: None, size=64)
    rc, _, err = run_cli("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / "e", "--subjects", "1", "2", "--cases", "1",
                         "--seeds", "0", "--steps", "1")
    assert rc == 0, err[-2000:]
    rows = _read_results(tmp_path / "e" / "results.jsonl")
    assert len(rows) == 4 and not any("motion_learnt_accuracy" in r for r in rows)  # no tracker ships for 64 px
    rc, out, err = run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "t")
    assert rc == 0, err[-2000:]
    rows = _read_results(tmp_path / "e" / "results.jsonl")
    assert all(r["tracker"] == "t" for r in rows) and "motion accuracy (learnt)" in (tmp_path / "e" / "table.md").read_text()
    r = rows[-1]
    video = tmp_path / "e" / "videos" / r["model"].replace(" ", "_") / f"{r['case']}_seed0.mp4"
    assert r["motion_learnt_accuracy"] == learnt_motion(read_video(video), eval_cases(2, 1)[0], load_tracker(tmp_path / "t"))["motion_learnt_accuracy"]
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["settings"]["tracker"] == "t"
    assert "0 of 4" in run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "t")[1]  # nothing left to score
    assert all(r["tracker_sha256"] == load_tracker(tmp_path / "t").sha256 for r in rows)
    # a test is told apart by its weights: the same weights in another folder are the same test ...
    shutil.copytree(tmp_path / "t", tmp_path / "t2")
    assert "0 of 4" in run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "t2")[1]
    # ... and other weights in a folder of the same name are another test
    from safetensors.torch import load_file, save_file

    (tmp_path / "other").mkdir()
    shutil.copytree(tmp_path / "t", tmp_path / "other" / "t")
    weights = load_file(tmp_path / "other" / "t" / "model.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, tmp_path / "other" / "t" / "model.safetensors")
    rc, _, err = run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "other" / "t")
    assert rc == 2 and "scored by the motion test t, not by the motion test t given now, whose weights differ" in err, err[-2000:]
    assert f"the folder whose model.safetensors has sha256 {rows[0]['tracker_sha256'][:12]}" in err
    for tracker in (("--tracker", tmp_path / "other" / "t"), ()):  # evaluate into it with another test, or with none: refused alike
        rc, _, err = run_cli("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / "e", "--subjects", "1", "2", "--cases", "1",
                             "--seeds", "0", "--steps", "1", *tracker)
        assert rc == 2 and "scored by the motion test t, not by" in err, err[-2000:]
    # evaluate records the test in its rows and summary, and goes on in the folder with the same weights moved
    args = ("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / "e3", "--subjects", "1", "--cases", "1", "--steps", "1")
    assert run_cli(*args, "--seeds", "0", "--tracker", tmp_path / "t")[0] == 0
    assert run_cli(*args, "--seeds", "0", "1", "--tracker", tmp_path / "t2")[0] == 0
    fresh = _read_results(tmp_path / "e3" / "results.jsonl")
    assert len(fresh) == 4 and {(r["tracker"], r["tracker_sha256"]) for r in fresh} == {("t", rows[0]["tracker_sha256"]), ("t2", rows[0]["tracker_sha256"])}
    assert json.loads((tmp_path / "e3" / "summary.json").read_text())["settings"]["tracker_sha256"] == rows[0]["tracker_sha256"]
    # rows from before the hash was recorded are told apart by the test's folder name, or by the hash
    # that rows of the same name record beside them
    old = [{k: v for k, v in r.items() if k != "tracker_sha256"} for r in rows]
    (tmp_path / "e" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert "0 of 4" in run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "other" / "t")[1]
    rc, _, err = run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "t2")
    assert rc == 2 and "scored by the motion test t, not by the motion test t2" in err
    (tmp_path / "e" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old[:2] + rows[2:]))
    assert "0 of 4" in run_cli("world", "rescore", tmp_path / "e", "--tracker", tmp_path / "t2")[1]
    config = json.loads((tmp_path / "t2" / "config.json").read_text())
    (tmp_path / "t2" / "config.json").write_text(json.dumps({**config, "size": 128}))
    rc, _, err = run_cli("world", "evaluate", "--model", "tiny=tiny-random", "--out", tmp_path / "e2", "--subjects", "1", "--cases", "1",
                         "--seeds", "0", "--steps", "1", "--tracker", tmp_path / "t2")
    assert rc == 2 and "trained for 128 px videos, not 64" in err
    (tmp_path / "m").mkdir()
    unscored = [{k: v for k, v in r.items() if k not in ("motion_learnt_accuracy", "tracker")} for r in rows]
    truth = {**unscored[0], "model": "ground truth", "spec": None}  # no video either, but rendered again
    (tmp_path / "m" / "results.jsonl").write_text(json.dumps(truth) + "\n")
    assert run_cli("world", "rescore", tmp_path / "m", "--tracker", tmp_path / "t")[0] == 0
    assert _read_results(tmp_path / "m" / "results.jsonl")[0]["motion_learnt_accuracy"] in (0.0, 1.0)
    (tmp_path / "m" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unscored))
    rc, _, err = run_cli("world", "rescore", tmp_path / "m", "--tracker", tmp_path / "t")
    assert rc == 2 and "no video" in err
