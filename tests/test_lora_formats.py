"""LoRAs in the formats Wan LoRAs are published in: every entry fused, none dropped, alpha and
scale honoured. Synthetic files for the tiny transformer; the expected weights are computed here
from the file's own tensors, module by module."""

import pytest
import torch
from safetensors.torch import save_file

from magref.errors import CheckpointError
from magref.models import apply_loras
from magref.tiny import tiny_random_pipeline

# official module -> diffusers module, for every linear layer a Wan LoRA trains
MODULES = {
    **{f"blocks.{{i}}.self_attn.{o}": f"blocks.{{i}}.attn1.{c}" for o, c in zip("qkvo", ["to_q", "to_k", "to_v", "to_out.0"])},
    **{f"blocks.{{i}}.cross_attn.{o}": f"blocks.{{i}}.attn2.{c}" for o, c in zip(["q", "k", "v", "o", "k_img", "v_img"],
                                                                                 ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"])},
    "blocks.{i}.ffn.0": "blocks.{i}.ffn.net.0.proj",
    "blocks.{i}.ffn.2": "blocks.{i}.ffn.net.2",
}
RANK, ALPHA, SCALE = 2, 1.0, 0.5


def _lora(fmt: str, transformer, seed: int = 0) -> tuple[dict, dict]:
    """(file tensors, expected change of each diffusers parameter at scale 1)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(transformer.named_parameters())
    tensors, expected = {}, {}
    for i in range(len(transformer.blocks)):
        for official, ours in MODULES.items():
            official, ours = official.format(i=i), ours.format(i=i)
            w = params[f"{ours}.weight"]
            down, up = torch.randn(RANK, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], RANK, generator=g) * 0.1
            if fmt == "comfy":  # ComfyUI / Kijai: diffusion_model. prefix, lora_down/lora_up, alpha
                key = f"diffusion_model.{official}"
                tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)})
                expected[f"{ours}.weight"] = up @ down * (ALPHA / RANK)
            elif fmt == "musubi":  # kohya musubi-tuner: lora_unet_ and underscores
                key = "lora_unet_" + official.replace(".", "_")
                tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)})
                expected[f"{ours}.weight"] = up @ down * (ALPHA / RANK)
            else:  # diffusers / peft (what `magref train` writes): no alpha, scale 1
                tensors.update({f"transformer.{ours}.lora_A.weight": down, f"transformer.{ours}.lora_B.weight": up})
                expected[f"{ours}.weight"] = up @ down
    if fmt == "comfy":  # the deltas step-distilled LoRAs carry: full weights, biases, norms
        for official, ours, shape_of in (("blocks.0.ffn.0.diff", "blocks.0.ffn.net.0.proj.weight", None),
                                         ("blocks.1.self_attn.o.diff_b", "blocks.1.attn1.to_out.0.bias", None),
                                         ("blocks.0.norm3.diff", "blocks.0.norm2.weight", None),
                                         ("head.head.diff_b", "proj_out.bias", None)):
            delta = torch.randn(params[ours].shape, generator=g) * 0.01
            tensors[f"diffusion_model.{official}"] = delta
            expected[ours] = expected.get(ours, 0) + delta
    return tensors, expected


@pytest.mark.parametrize("fmt", ["comfy", "musubi", "peft"])
def test_every_entry_of_a_lora_is_fused_at_its_scale(tmp_path, fmt):
    pipe = tiny_random_pipeline()
    before = {k: v.detach().clone() for k, v in pipe.transformer.named_parameters()}
    tensors, expected = _lora(fmt, pipe.transformer)
    path = tmp_path / f"{fmt}.safetensors"
    save_file(tensors, path)
    records = apply_loras(pipe, [{"file": str(path), "scale": SCALE}])
    assert records[0]["sha256"]
    after = dict(pipe.transformer.named_parameters())
    assert set(after) == set(before)  # the adapter layers are gone, the weights fused
    for name, w0 in before.items():
        want = w0 + SCALE * expected[name] if name in expected else w0
        torch.testing.assert_close(after[name].detach(), want, atol=1e-5, rtol=1e-4, msg=name)


def test_a_lora_of_deltas_only_and_one_for_another_model_are_handled(tmp_path):
    pipe = tiny_random_pipeline()
    w = dict(pipe.transformer.named_parameters())["blocks.0.ffn.net.2.weight"].detach().clone()
    delta = torch.full_like(w, 0.25)
    save_file({"diffusion_model.blocks.0.ffn.2.diff": delta}, tmp_path / "deltas.safetensors")
    apply_loras(pipe, [{"file": str(tmp_path / "deltas.safetensors"), "scale": 2.0}])
    torch.testing.assert_close(dict(pipe.transformer.named_parameters())["blocks.0.ffn.net.2.weight"].detach(), w + 0.5)
    # a delta for a weight of another size, and one for a block this model lacks: refused, not dropped
    save_file({"diffusion_model.blocks.0.ffn.2.diff": torch.zeros(3, 3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match="delta for blocks.0.ffn.net.2.weight is \\(3, 3\\)"):
        apply_loras(tiny_random_pipeline(), [{"file": str(tmp_path / "wrong.safetensors"), "scale": 1.0}])
    save_file({"diffusion_model.blocks.7.ffn.2.diff": torch.zeros(3, 3)}, tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointError, match="does not have"):
        apply_loras(tiny_random_pipeline(), [{"file": str(tmp_path / "deep.safetensors"), "scale": 1.0}])
