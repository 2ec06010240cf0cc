"""Official key names and configs -> diffusers / transformers ones. The official T5 and CLIP checkpoints have no
converter in any library, so their key maps are written here (checked against golden outputs)."""

from __future__ import annotations

import re

import torch

from ..errors import CheckpointError


def transformer_config_from_official(cfg: dict, keys_shapes: dict[str, tuple]) -> dict:
    """diffusers WanTransformer3DModel config from the official WanModel config (+ shapes for
    the fields the official config.json leaves to defaults)."""
    dim, heads = int(cfg.get("dim", 5120)), int(cfg.get("num_heads", 40))
    text_dim = keys_shapes.get("text_embedding.0.weight", (dim, cfg.get("text_dim", 4096)))[1]
    img = keys_shapes.get("img_emb.proj.0.weight")
    return dict(
        patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=int(cfg.get("in_dim", 36)),
        out_channels=int(cfg.get("out_dim", 16)),
        text_dim=int(text_dim),
        freq_dim=int(cfg.get("freq_dim", 256)),
        ffn_dim=int(cfg.get("ffn_dim", 13824)),
        num_layers=int(cfg.get("num_layers", 40)),
        cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
        qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None,
        eps=float(cfg.get("eps", 1e-6)),
        image_dim=int(img[0]) if img else None,
        added_kv_proj_dim=dim if img else None,
        rope_max_seq_len=1024,
    )


# Where each size can be read off a single-file transformer, in either key layout.
_SHAPE_KEYS = {
    "official": dict(patch="patch_embedding.weight", head="head.head.weight", ffn="blocks.0.ffn.0.weight",
                     time="time_embedding.0.weight", text="text_embedding.0.weight", image="img_emb.proj.0.weight"),
    "diffusers": dict(patch="patch_embedding.weight", head="proj_out.weight", ffn="blocks.0.ffn.net.0.proj.weight",
                      time="condition_embedder.time_embedder.linear_1.weight", text="condition_embedder.text_embedder.linear_1.weight",
                      image="condition_embedder.image_embedder.norm1.weight"),
}


def _config_from_shapes(shapes: dict[str, tuple], layout: str) -> dict:
    """diffusers config for a single-file transformer (no config.json): read off the shapes."""
    k = _SHAPE_KEYS[layout]
    dim = shapes[k["patch"]][0]
    official = dict(
        dim=dim,
        # q/k norms span all heads, so shapes do not tell the head count; Wan sizes use 128-wide heads
        num_heads={1536: 12, 2048: 16, 3072: 24, 5120: 40}.get(dim, max(1, dim // 128)),
        num_layers=1 + max(int(key.split(".")[1]) for key in shapes if key.startswith("blocks.")),
        in_dim=shapes[k["patch"]][1],
        out_dim=shapes[k["head"]][0] // 4,
        ffn_dim=shapes[k["ffn"]][0],
        freq_dim=shapes[k["time"]][1],
    )
    known = {"text_embedding.0.weight": shapes[k["text"]]}
    if k["image"] in shapes:
        known["img_emb.proj.0.weight"] = shapes[k["image"]]
    return transformer_config_from_official(official, known)


def t5_official_to_umt5(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key map written by hand: no library converts the official Wan T5 checkpoint."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)", k)
        if k == "token_embedding.weight":
            out["shared.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif m:
            i, rest = m.groups()
            p = f"encoder.block.{i}."
            rename = {
                "norm1.weight": "layer.0.layer_norm.weight",
                "attn.q.weight": "layer.0.SelfAttention.q.weight",
                "attn.k.weight": "layer.0.SelfAttention.k.weight",
                "attn.v.weight": "layer.0.SelfAttention.v.weight",
                "attn.o.weight": "layer.0.SelfAttention.o.weight",
                "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
                "norm2.weight": "layer.1.layer_norm.weight",
                "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
                "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
                "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
            }
            if rest not in rename:
                raise CheckpointError(f"Unknown key {k} in the official T5 checkpoint.", "pass the umt5 encoder checkpoint of the official release.")
            out[p + rename[rest]] = v
        else:
            raise CheckpointError(f"Unknown key {k} in the official T5 checkpoint.", "pass the umt5 encoder checkpoint of the official release.")
    return out


def umt5_config_from_official(sd: dict[str, torch.Tensor]):
    from transformers import UMT5Config

    if "blocks.0.pos_embedding.embedding.weight" not in sd:
        raise CheckpointError("The T5 checkpoint has no per-block position bias: it is not the umt5 encoder.", "pass models_t5_umt5-xxl-enc-bf16.pth.")
    vocab, dim = sd["token_embedding.weight"].shape
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    return UMT5Config(
        vocab_size=int(vocab),
        d_model=int(dim),
        d_kv=int(sd["blocks.0.attn.q.weight"].shape[0] // heads),
        d_ff=int(sd["blocks.0.ffn.fc1.weight"].shape[0]),
        num_layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
        num_heads=int(heads),
        relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # official T5 GELU is the tanh approximation = gelu_new
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        scalable_attention=False,
    )


def clip_official_to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key map written by hand: the official checkpoint fuses q/k/v and names layers its own way.
    The text tower (`textual.*`), the projection `head` and `post_norm` are not used for the
    penultimate-block features that condition the transformer."""
    out = {}
    pre = "vision_model."
    for k, v in sd.items():
        if not k.startswith("visual."):
            if k.startswith(("transformer.", "patch_embedding", "cls_embedding", "pos_embedding", "pre_norm")):
                k = "visual." + k  # a bare visual tower
            else:
                continue
        k = k[len("visual.") :]
        m = re.match(r"transformer\.(\d+)\.(.+)", k)
        if k == "cls_embedding":
            out[pre + "embeddings.class_embedding"] = v.reshape(-1)
        elif k == "pos_embedding":
            out[pre + "embeddings.position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
        elif k == "patch_embedding.weight":
            out[pre + "embeddings.patch_embedding.weight"] = v
        elif k.startswith("pre_norm."):
            out[pre + "pre_layrnorm." + k.split(".", 1)[1]] = v
        elif k.startswith("post_norm."):
            out[pre + "post_layernorm." + k.split(".", 1)[1]] = v
        elif k == "head":
            continue
        elif m:
            i, rest = m.groups()
            p = f"{pre}encoder.layers.{i}."
            if rest.startswith("attn.to_qkv."):
                q, kk, vv = v.chunk(3, dim=0)
                leaf = rest.rsplit(".", 1)[1]
                out[p + f"self_attn.q_proj.{leaf}"], out[p + f"self_attn.k_proj.{leaf}"], out[p + f"self_attn.v_proj.{leaf}"] = q, kk, vv
            else:
                rename = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
                mod, leaf = rest.rsplit(".", 1)
                if mod not in rename:
                    raise CheckpointError(f"Unknown key visual.{k} in the official CLIP checkpoint.", "pass the official open-clip XLM-R ViT-H checkpoint.")
                out[p + f"{rename[mod]}.{leaf}"] = v
        else:
            raise CheckpointError(f"Unknown key visual.{k} in the official CLIP checkpoint.", "pass the official open-clip XLM-R ViT-H checkpoint.")
    return out


# Attention head counts are not recorded in the weights; these are the open-clip ViT widths.
CLIP_HEADS_BY_WIDTH = {1280: 16, 1024: 16, 768: 12}


def clip_config_from_official(sd: dict[str, torch.Tensor], num_heads: int | None = None):
    from transformers import CLIPVisionConfig

    v = {k.removeprefix("visual."): t for k, t in sd.items() if k.startswith("visual.") or not k.startswith("textual.")}
    dim, _, patch, _ = v["patch_embedding.weight"].shape
    tokens = v["pos_embedding"].shape[-2]
    grid = int(round((tokens - 1) ** 0.5))
    heads = num_heads or CLIP_HEADS_BY_WIDTH.get(int(dim))
    if heads is None:
        raise CheckpointError(
            f"The CLIP checkpoint has width {dim}, whose attention head count is not standard.",
            "pass num_heads (CLI: --clip-heads N).",
        )
    return CLIPVisionConfig(
        hidden_size=int(dim),
        intermediate_size=int(v["transformer.0.mlp.0.weight"].shape[0]),
        num_hidden_layers=1 + max(int(k.split(".")[1]) for k in v if k.startswith("transformer.")),
        num_attention_heads=heads,
        image_size=int(grid * patch),
        patch_size=int(patch),
        projection_dim=int(v["head"].shape[1]) if "head" in v else int(dim),
        hidden_act="gelu",  # open-clip ViT-H uses exact GELU, not quick_gelu
        layer_norm_eps=1e-5,
    )
