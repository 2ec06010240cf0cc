"""LoRA files in the formats Wan LoRAs are published in, fused with nothing dropped.

diffusers' `WanLoraLoaderMixin.lora_state_dict` reads the low-rank pairs of the community formats
(ComfyUI / Kijai `diffusion_model.blocks.N.self_attn.q.lora_down|lora_up.weight` with `.alpha`,
musubi `lora_unet_...`, peft `lora_A|lora_B`) and `diff_b` bias deltas of the modules it knows,
but it drops two kinds of entry with only a log line: full weight deltas (`X.diff`, which
step-distilled "LoRAs" carry) and deltas of norm layers. Since magref fuses every LoRA into the
weights anyway, those deltas are applied here directly (weight += scale * delta), and the pairs
go through diffusers. `split_lora` separates them; `apply_deltas` adds them; `check_consumed`
refuses a file whose pairs diffusers did not all place.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError

_PREFIXES = ("diffusion_model.", "model.diffusion_model.")


def _official_name(key: str) -> str | None:
    """The official-layout module path of a community-format key, or None for diffusers keys."""
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return None


def split_lora(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(pairs for diffusers, deltas) where deltas are the community format's `X.diff` (weight)
    and `X.diff_b` (bias) entries, renamed to the official weights they change (`X.weight`,
    `X.bias`). A diffusers/peft-format file has no deltas."""
    pairs, deltas = {}, {}
    for key, value in state_dict.items():
        name = _official_name(key)
        if name is not None and name.endswith(".diff"):
            deltas[name[: -len(".diff")] + ".weight"] = value
        elif name is not None and name.endswith(".diff_b"):
            deltas[name[: -len(".diff_b")] + ".bias"] = value
        else:
            pairs[key] = value
    return pairs, deltas


def deltas_to_diffusers(deltas: dict[str, torch.Tensor], transformer) -> dict[str, torch.Tensor]:
    """Official weight names -> the diffusers transformer's (diffusers' own checkpoint key map),
    each checked against the model: a delta for a weight the model lacks, or of another shape,
    is refused rather than dropped."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    if not deltas:
        return {}
    converted = convert_wan_transformer_to_diffusers(dict(deltas))
    own = dict(transformer.named_parameters())
    if len(converted) != len(deltas):
        raise CheckpointError(f"{len(deltas) - len(converted)} weight delta(s) of the LoRA map to no transformer weight.",
                              "pass a LoRA made for a Wan2.1 14B image-to-video model (MAGREF's base).")
    for name, value in converted.items():
        if name not in own:
            raise CheckpointError(f"The LoRA changes {name}, which this transformer does not have.",
                                  "pass a LoRA made for this model's architecture.")
        if tuple(own[name].shape) != tuple(value.shape):
            raise CheckpointError(f"The LoRA's delta for {name} is {tuple(value.shape)}, the weight is {tuple(own[name].shape)}.",
                                  "pass a LoRA made for this model's size.")
    return converted


@torch.no_grad()
def apply_deltas(transformer, deltas: dict[str, torch.Tensor], scale: float) -> None:
    own = dict(transformer.named_parameters())
    for name, value in deltas.items():
        p = own[name]
        p.add_(value.to(device=p.device, dtype=torch.float32).mul(scale).to(p.dtype))


def lora_pair_count(state_dict: dict[str, torch.Tensor]) -> int:
    """Low-rank pairs in a LoRA file of any of the formats (one down/A matrix each)."""
    return sum(1 for k in state_dict if k.endswith((".lora_down.weight", ".lora_A.weight")) or (".lora_A." in k and k.endswith(".weight")))


def check_consumed(transformer, adapter: str, converted: dict, file, pairs_in_file: int) -> None:
    """Every low-rank pair of the file became a LoRA layer of `adapter`: diffusers' conversion
    yields as many pairs as the file holds, and each names a module that now carries the adapter
    (diffusers may add zero pairs of its own, e.g. for the image cross-attention of an I2V model,
    which are not counted)."""
    modules = {k.removeprefix("transformer.").split(".lora_A")[0] for k in converted if ".lora_A" in k}
    if len(modules) < pairs_in_file:
        raise CheckpointError(f"{file}: {pairs_in_file} low-rank pairs, but diffusers read {len(modules)} of them.",
                              "pass a LoRA in a format diffusers reads (diffusers/peft, ComfyUI/Kijai, musubi).")
    carrying = {n for n, m in transformer.named_modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and adapter in m.lora_A}
    missing = sorted(modules - carrying)
    if missing:
        raise CheckpointError(f"{file}: {len(missing)} low-rank pair(s) were not placed on the transformer (first: {missing[0]}).",
                              "pass a LoRA made for this model (some of its layers do not exist here).")
