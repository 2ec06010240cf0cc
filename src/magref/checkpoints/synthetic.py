"""Synthetic checkpoints in the official transformer layout (real 14B widths, random weights), for the memory
benchmark and the tests: no machine here can download the real one."""

from __future__ import annotations

import json
from pathlib import Path

import torch



OFFICIAL_14B_I2V = dict(
    model_type="i2v", patch_size=[1, 2, 2], text_len=512, in_dim=36, dim=5120, ffn_dim=13824, freq_dim=256,
    text_dim=4096, out_dim=16, num_heads=40, num_layers=40, window_size=[-1, -1], qk_norm=True, cross_attn_norm=True, eps=1e-6,
)


def official_transformer_shapes(cfg: dict, clip_dim: int = 1280) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of an official WanModel (i2v) state dict, block by block."""
    d, f, p = cfg["dim"], cfg["ffn_dim"], cfg.get("patch_size", [1, 2, 2])
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg["in_dim"], *p),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.get("text_dim", 4096)),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg["freq_dim"]),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, d)
        for attn, projs in (("self_attn", "qkvo"), ("cross_attn", ["q", "k", "v", "o", "k_img", "v_img"])):
            for name in projs:
                shapes[f"{b}{attn}.{name}.weight"] = (d, d)
                shapes[f"{b}{attn}.{name}.bias"] = (d,)
            for norm in ("norm_q", "norm_k") + (("norm_k_img",) if attn == "cross_attn" else ()):
                shapes[f"{b}{attn}.{norm}.weight"] = (d,)
        shapes[b + "norm3.weight"] = (d,)
        shapes[b + "norm3.bias"] = (d,)
        shapes[b + "ffn.0.weight"] = (f, d)
        shapes[b + "ffn.0.bias"] = (f,)
        shapes[b + "ffn.2.weight"] = (d, f)
        shapes[b + "ffn.2.bias"] = (d,)
    shapes["head.modulation"] = (1, 2, d)
    shapes["head.head.weight"] = (cfg["out_dim"] * p[0] * p[1] * p[2], d)
    shapes["head.head.bias"] = (cfg["out_dim"] * p[0] * p[1] * p[2],)
    shapes.update({
        "img_emb.proj.0.weight": (clip_dim,), "img_emb.proj.0.bias": (clip_dim,),
        "img_emb.proj.1.weight": (clip_dim, clip_dim), "img_emb.proj.1.bias": (clip_dim,),
        "img_emb.proj.3.weight": (d, clip_dim), "img_emb.proj.3.bias": (d,),
        "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,),
    })
    return shapes


def write_synthetic_official_transformer(dst: str | Path, cfg: dict, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> int:
    """Write an official-layout transformer folder with random weights, one block per shard,
    never holding more than one shard in memory. Returns the number of bytes of weights."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shapes = official_transformer_shapes(cfg)
    groups: dict[str, list[str]] = {}
    for k in shapes:
        group = ".".join(k.split(".")[:2]) if k.startswith("blocks.") else "embeddings"
        groups.setdefault(group, []).append(k)
    names = list(groups)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for n, group in enumerate(names, 1):
        fname = f"diffusion_pytorch_model-{n:05d}-of-{len(names):05d}.safetensors"
        shard = {k: (torch.randn(shapes[k], generator=gen) * 0.02).to(dtype) for k in groups[group]}
        total += sum(t.numel() * t.element_size() for t in shard.values())
        save_file(shard, dst / fname)
        weight_map.update({k: fname for k in shard})
        del shard
    (dst / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"_class_name": "WanModel", **{k: v for k, v in cfg.items() if k not in ("text_dim",)}}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return total
