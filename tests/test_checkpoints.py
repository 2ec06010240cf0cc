"""Checkpoint detection, loading and conversion: official folder, single files, bad files."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import golden, run_cli
from magref import checkpoints as ck
from magref.errors import CheckpointError


def official_folder(tmp_path):
    """The official MAGREF folder layout, assembled from the golden tiny parts (links, not copies)."""
    root = tmp_path / "MAGREF-480P"
    root.mkdir()
    for f in golden("model", "dit_official").iterdir():
        os.symlink(f, root / f.name)
    os.symlink(golden("model", "vae_official.pth"), root / ck.OFFICIAL_FILES["vae"])
    os.symlink(golden("encoders", "t5_official.pth"), root / ck.OFFICIAL_FILES["text_encoder"])
    os.symlink(golden("encoders", "clip_visual_official.pth"), root / ck.OFFICIAL_FILES["image_encoder"])
    from magref.tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(root / ck.OFFICIAL_FILES["tokenizer"])
    return root


def test_detect_kinds(tmp_path):
    root = official_folder(tmp_path)
    assert ck.detect_kind(root) == "official-magref"
    assert ck.detect_kind(golden("model", "dit_official")) == "official-transformer"
    assert ck.detect_kind(golden("model", "vae_official.pth")) == "official-vae"
    assert ck.detect_kind(golden("model", "vae_official.safetensors")) == "official-vae"
    assert ck.detect_kind(golden("encoders", "t5_official.pth")) == "official-t5"
    assert ck.detect_kind(golden("encoders", "clip_visual_official.pth")) == "official-clip"


def test_convert_official_folder_to_pipeline(tmp_path):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from magref import MagrefPipeline

    root, dst = official_folder(tmp_path), tmp_path / "converted"
    rc, _, err = run_cli("convert", root, dst, "--clip-heads", "2")
    assert rc == 0, err
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == "MagrefPipeline" and index["scheduler"] == ["magref.schedulers", "FlowUniPCScheduler"]
    pipe = MagrefPipeline.from_pretrained(dst)
    io = load_file(golden("model", "dit_io.safetensors"))
    x = torch.cat([io["x"], io["y"]])[None]
    ctx = torch.cat([io["context"], torch.zeros(503, 48)])[None]
    out = pipe.transformer(x, torch.tensor([500]), ctx, io["clip_fea"], return_dict=False)[0][0]
    assert (out - io["dit_out_t500"]).abs().max() <= 1e-4
    # the subfolders are plain diffusers models too
    WanTransformer3DModel.from_pretrained(dst, subfolder="transformer")
    AutoencoderKLWan.from_pretrained(dst, subfolder="vae")
    assert pipe.image_encoder.config.num_attention_heads == 2 and pipe.image_processor.crop_size["height"] == 28


def test_single_file_transformers_bf16(tmp_path):
    """Community single files: official keys (prefixed) or diffusers keys, bf16."""
    sd = {}
    for f in sorted(golden("model", "dit_official").glob("*.safetensors")):
        sd.update(load_file(f))
    save_file({"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "official_bf16.safetensors")
    a = ck.load_transformer(tmp_path / "official_bf16.safetensors", torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.config.num_layers == 2 and a.config.image_dim == 1280
    ref = ck.load_transformer(golden("model", "dit_official"))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "diffusers.safetensors")
    b = ck.load_transformer(tmp_path / "diffusers.safetensors")
    assert all(torch.equal(b.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_wrong_kind_truncated_and_missing_key_cli(tmp_path):
    # a VAE passed as the transformer
    rc, _, err = run_cli("convert", golden("model", "vae_official.pth"), tmp_path / "x", "--component", "transformer")
    assert rc == 2 and "Wan2.1 VAE" in err and "not a transformer checkpoint" in err and len(err.strip().splitlines()) == 1, err
    # a truncated shard
    shards = tmp_path / "dit"
    shutil.copytree(golden("model", "dit_official"), shards)
    shard = sorted(shards.glob("*-00005-of-00013.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    rc, _, err = run_cli("convert", shards, tmp_path / "y", "--component", "transformer")
    assert rc == 2 and shard.name in err and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1, err
    # a missing key
    shutil.rmtree(shards)
    shutil.copytree(golden("model", "dit_official"), shards)
    index = json.loads((shards / "diffusion_pytorch_model.safetensors.index.json").read_text())
    victim = "blocks.1.ffn.2.weight"
    f = shards / index["weight_map"][victim]
    sd = load_file(f)
    del sd[victim]
    save_file(sd, f)
    rc, _, err = run_cli("convert", shards, tmp_path / "z", "--component", "transformer")
    assert rc == 2 and "missing 1 weight" in err and "blocks.1.ffn.net.2.weight" in err, err
    assert not (tmp_path / "z").exists()


def test_pth_is_loaded_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"encoder.conv1.weight": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        ck.read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_load_pipeline_from_official_folder(tmp_path):
    from magref.models import load_pipeline

    root = official_folder(tmp_path)
    with pytest.raises(CheckpointError, match="width 32"):
        load_pipeline(str(root))  # non-standard CLIP width needs the head count; the error says so
    pipe = ck.load_official_pipeline(root, clip_heads=2)
    assert type(pipe).__name__ == "MagrefPipeline" and pipe.transformer.config.in_channels == 36


def test_official_layout_spec_matches_the_golden_checkpoint(tmp_path):
    """The synthetic-checkpoint writer uses the real key layout: checked on the golden tiny model."""
    cfg = json.loads(golden("model", "configs.json").read_text())["dit_config_official"]
    golden_shapes = {}
    for f in golden("model", "dit_official").glob("*.safetensors"):
        golden_shapes.update({k: tuple(v.shape) for k, v in load_file(f).items()})
    assert ck.official_transformer_shapes(cfg) == golden_shapes
    size = ck.write_synthetic_official_transformer(tmp_path / "syn", cfg)
    model = ck.load_transformer(tmp_path / "syn", torch.bfloat16)
    assert size == sum(p.numel() * 2 for p in model.parameters()) and model.dtype == torch.bfloat16


def test_hub_id_is_resolved_only_on_request_and_fails_clearly_offline(tmp_path):
    rc, _, err = run_cli("convert", "some-org/some-model", tmp_path / "out")  # tests run with HF_HUB_OFFLINE=1
    assert rc == 2 and "fetching it from the hub failed" in err and len(err.strip().splitlines()) == 1, err
    assert ck.resolve(golden("model", "dit_official")) == golden("model", "dit_official")


def test_convert_refuses_a_taken_destination_and_a_bad_shard_size_and_writes_whole_or_nothing(tmp_path, monkeypatch):
    """`convert` to an existing file or a non-empty folder, or with a shard size that is not a
    size, is one line before any weight is read; a conversion that fails midway leaves no
    folder under the name asked for."""
    src = golden("model", "dit_official")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for dst, extra, needle in ((tmp_path / "file", [], "is a file"), (tmp_path / "full", [], "is not empty"),
                               (tmp_path / "new", ["--max-shard-size", "lots"], "is not a size")):
        rc, _, err = run_cli("convert", src, dst, "--component", "transformer", *extra)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()

    from diffusers import WanTransformer3DModel

    def fail_midway(self, folder, **kw):
        (Path(folder) / "half.safetensors").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(WanTransformer3DModel, "save_pretrained", fail_midway)
    rc, _, err = run_cli("convert", src, tmp_path / "half", "--component", "transformer")
    assert rc != 0 and not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))
    monkeypatch.undo()
    rc, _, err = run_cli("convert", src, tmp_path / "ok", "--component", "transformer", "--max-shard-size", "300000")  # bytes
    assert rc == 0 and (tmp_path / "ok" / "config.json").is_file() and not list(tmp_path.glob(".ok*")), err
