"""Checkpoints: detect what a path holds and load it into MagrefPipeline components.

Supported inputs:
- the official MAGREF folder: `config.json` (`_class_name: WanModel`) + sharded safetensors,
  `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`,
  `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `google/umt5-xxl` tokenizer folder;
- diffusers folders (a whole MagrefPipeline / Wan I2V pipeline, or one component);
- single-file transformers (official or diffusers key names, bf16/fp8 safetensors).

Transformer and VAE keys are converted with diffusers' own functions. The official T5 and CLIP
checkpoints have no converter in any library, so `t5_official_to_umt5` and
`clip_official_to_transformers` are written here (key maps checked against golden outputs).

Memory: weights are read shard by shard (safetensors `safe_open`, `.pth` with mmap) into a model
built on the meta device and assigned in place, so host RAM holds one copy in the target dtype.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

import torch

from .conditioning import CLIP_MEAN, CLIP_STD
from .errors import CheckpointError

OFFICIAL_FILES = {
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "tokenizer": "google/umt5-xxl",
}
COMPONENTS = ("transformer", "vae", "text_encoder", "image_encoder")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


# ----------------------------------------------------------------------------------------------
# Reading weights
# ----------------------------------------------------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        names = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        files = [path / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index[0]} lists shard(s) that are missing: {missing[:3]}.", "download the missing shards again.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no .safetensors weights.", "point at the folder holding the model's weights.")
    return files


def iter_shards(path: str | Path, dtype: torch.dtype | None = None) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yield (file, state dict) one shard at a time, cast to `dtype` tensor by tensor."""
    for f in _weight_files(Path(path)):
        yield f, read_state_dict(f, dtype)


def read_state_dict(f: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    f = Path(f)
    if not f.is_file():
        raise CheckpointError(f"Checkpoint file {f} does not exist.", "check the path.")
    cast = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    try:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            out = {}
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    out[k] = cast(sf.get_tensor(k))
            return out
        # Never unpickle arbitrary objects: weights_only, and mmap so nothing is read twice.
        sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{f} does not hold a state dict.", "pass a weights file (.safetensors or a state-dict .pth).")
        return {k: cast(v) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    except CheckpointError:
        raise
    except Exception as e:  # truncated, corrupt, or a pickle that is not plain tensors
        raise CheckpointError(
            f"Checkpoint file {f} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); it may be truncated or corrupt.",
            "download it again and compare its size/hash with the source.",
        ) from None


def peek_keys(f: Path) -> list[str]:
    f = Path(f)
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as sf:
                return list(sf.keys())
        except Exception as e:
            raise CheckpointError(f"Checkpoint file {f} could not be read ({e}); it may be truncated or corrupt.", "download it again.") from None
    return list(read_state_dict(f).keys())


# ----------------------------------------------------------------------------------------------
# Detecting the kind of a path
# ----------------------------------------------------------------------------------------------
KIND_DESCRIPTIONS = {
    "pipeline": "a diffusers MagrefPipeline / Wan I2V pipeline folder",
    "official-magref": "the official MAGREF checkpoint folder",
    "official-transformer": "an official Wan/MAGREF transformer (WanModel)",
    "diffusers-transformer": "a diffusers WanTransformer3DModel",
    "official-vae": "an official Wan2.1 VAE state dict",
    "diffusers-vae": "a diffusers AutoencoderKLWan",
    "official-t5": "an official UMT5 text encoder state dict",
    "transformers-umt5": "a transformers UMT5EncoderModel folder",
    "official-clip": "an official open-clip XLM-R ViT-H state dict",
    "transformers-clip": "a transformers CLIPVisionModel folder",
}
COMPONENT_KINDS = {
    "transformer": ("official-transformer", "diffusers-transformer"),
    "vae": ("official-vae", "diffusers-vae"),
    "text_encoder": ("official-t5", "transformers-umt5"),
    "image_encoder": ("official-clip", "transformers-clip"),
}


def _kind_from_keys(keys: list[str]) -> str | None:
    ks = set(k.replace("model.diffusion_model.", "") for k in keys)
    if "blocks.0.self_attn.q.weight" in ks:
        return "official-transformer"
    if "blocks.0.attn1.to_q.weight" in ks:
        return "diffusers-transformer"
    if "encoder.conv1.weight" in ks and any(k.startswith("encoder.downsamples.") for k in ks):
        return "official-vae"
    if any(k.startswith("encoder.down_blocks.") for k in ks) and "quant_conv.weight" in ks:
        return "diffusers-vae"
    if "token_embedding.weight" in ks and "blocks.0.attn.q.weight" in ks:
        return "official-t5"
    if any(re.match(r"(visual\.)?transformer\.0\.attn\.to_qkv\.weight", k) for k in ks):
        return "official-clip"
    return None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(source: str | Path) -> Path:
    """A local path as is; a hub id (org/name) that is not a local path is downloaded, which
    happens only because the user named it."""
    path = Path(source).expanduser()
    if path.exists() or not _HUB_ID.match(str(source)):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source)))
    except Exception as e:
        raise CheckpointError(
            f"{source} is not a local path, and fetching it from the hub failed ({type(e).__name__}).",
            "check the id and the network, or download it and pass the folder.",
        ) from None


def detect_kind(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.", "check the path.")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "pipeline"
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            cls = cfg.get("_class_name")
            if cls == "WanModel":
                return "official-magref" if (path / OFFICIAL_FILES["vae"]).is_file() else "official-transformer"
            if cls == "WanTransformer3DModel":
                return "diffusers-transformer"
            if cls == "AutoencoderKLWan":
                return "diffusers-vae"
            if cfg.get("model_type") == "umt5" or "UMT5EncoderModel" in cfg.get("architectures", []):
                return "transformers-umt5"
            if cfg.get("model_type") in ("clip_vision_model", "clip"):
                return "transformers-clip"
        files = [f for f in _weight_files(path)] if any(path.glob("*.safetensors")) else []
        if files:
            kind = _kind_from_keys(peek_keys(files[0]))
            if kind:
                return kind
        raise CheckpointError(
            f"{path} is not a checkpoint magref knows (no model_index.json, no known config.json, no known weights).",
            "pass the official MAGREF folder, a diffusers folder, or a single weights file.",
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path} is not a weights file ({path.suffix}).", f"pass one of {', '.join(WEIGHT_SUFFIXES)}.")
    kind = _kind_from_keys(peek_keys(path))
    if kind is None:
        raise CheckpointError(f"{path} holds weights of no kind magref knows.", "pass a Wan/MAGREF transformer, Wan VAE, UMT5 or CLIP checkpoint.")
    return kind


def expect_kind(path: Path, component: str) -> str:
    kind = detect_kind(path)
    if kind == "official-magref" and component == "transformer":
        return "official-transformer"  # the official folder's own config.json and shards
    if kind not in COMPONENT_KINDS[component]:
        raise CheckpointError(
            f"{path} is {KIND_DESCRIPTIONS.get(kind, kind)}, not a {component} checkpoint.",
            f"pass {' or '.join(KIND_DESCRIPTIONS[k] for k in COMPONENT_KINDS[component])} for --component {component}.",
        )
    return kind


# ----------------------------------------------------------------------------------------------
# Building a model from shards without a second copy
# ----------------------------------------------------------------------------------------------
def _load_into(model: torch.nn.Module, shards, convert: Callable[[dict], dict], source: Path, dtype) -> torch.nn.Module:
    """Assign converted shards into a meta-device model; any tensor left on meta is missing."""
    expected_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = set(expected_shapes)
    seen: set[str] = set()
    for f, sd in shards:
        sd = convert(sd)
        unexpected = set(sd) - expected
        if unexpected:
            raise CheckpointError(
                f"{f} has {len(unexpected)} key(s) the {type(model).__name__} does not have, e.g. {sorted(unexpected)[:3]}.",
                "check that the checkpoint matches the component (and its config).",
            )
        for k, v in sd.items():
            if expected_shapes[k] != tuple(v.shape):
                raise CheckpointError(f"{f}: {k} has shape {tuple(v.shape)}, expected {expected_shapes[k]}.", "check the config matches the checkpoint.")
        model.load_state_dict(sd, strict=False, assign=True)
        seen |= set(sd)
        del sd
    missing = sorted(expected - seen)
    # tied weights (e.g. UMT5's encoder.embed_tokens = shared) are filled by tie_weights
    if hasattr(model, "tie_weights"):
        model.tie_weights()
        missing = [k for k in missing if _is_meta(model, k)]
    if missing:
        raise CheckpointError(
            f"{source} is missing {len(missing)} weight(s) for {type(model).__name__}, e.g. {missing[:3]}.",
            "the checkpoint is incomplete or of another model size; download it again or pass the matching one.",
        )
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _is_meta(model, key) -> bool:
    t = model.state_dict().get(key)
    return t is None or t.is_meta


def _meta_model(factory):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


# ----------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------
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


def load_transformer(path: str | Path, dtype: torch.dtype | None = None):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = Path(path)
    kind = expect_kind(path, "transformer")
    if kind == "diffusers-transformer" and path.is_dir():
        return WanTransformer3DModel.from_pretrained(path, torch_dtype=dtype)
    shapes = _shapes(path)
    if kind == "diffusers-transformer":  # a single diffusers-format file: keys as they are
        model = _meta_model(lambda: WanTransformer3DModel(**_config_from_shapes(shapes, "diffusers")))
        return _load_into(model, iter_shards(path, dtype), lambda sd: sd, path, dtype)
    shapes = {k.replace("model.diffusion_model.", ""): v for k, v in shapes.items()}
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file and cfg_file.is_file():
        config = transformer_config_from_official(json.loads(cfg_file.read_text()), shapes)
    else:
        config = _config_from_shapes(shapes, "official")
    model = _meta_model(lambda: WanTransformer3DModel(**config))
    return _load_into(model, iter_shards(path, dtype), lambda sd: convert_wan_transformer_to_diffusers(sd), path, dtype)


def _shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    out = {}
    for f in _weight_files(path):
        if f.suffix != ".safetensors":
            return {k: tuple(v.shape) for k, v in read_state_dict(f).items()}
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    out[k] = tuple(sf.get_slice(k).get_shape())
        except Exception as e:
            raise CheckpointError(f"Checkpoint file {f} could not be read ({e}); it may be truncated or corrupt.", "download it again.") from None
    return out


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------
def load_vae(path: str | Path, dtype: torch.dtype | None = None):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = Path(path)
    kind = expect_kind(path, "vae")
    if kind == "diffusers-vae" and path.is_dir():
        return AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype)
    sd = read_state_dict(_weight_files(path)[0], dtype)
    if kind == "diffusers-vae":
        converted = sd
        base_dim = sd["encoder.conv_in.weight"].shape[0]
        z_dim = sd["post_quant_conv.weight"].shape[0]
    else:
        # The Wan2.1 VAE has one architecture; only the base width (and z) vary in test models.
        base_dim, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        converted = convert_wan_vae_to_diffusers(sd)
    config = dict(base_dim=int(base_dim), z_dim=int(z_dim), dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True])
    model = _meta_model(lambda: AutoencoderKLWan(**config))
    return _load_into(model, [(path, converted)], lambda s: s, path, dtype)


# ----------------------------------------------------------------------------------------------
# Text encoder: official T5 (umt5 form) -> transformers UMT5EncoderModel
# ----------------------------------------------------------------------------------------------
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


def load_text_encoder(path: str | Path, dtype: torch.dtype | None = None):
    from transformers import UMT5EncoderModel

    path = Path(path)
    kind = expect_kind(path, "text_encoder")
    if kind == "transformers-umt5":
        return UMT5EncoderModel.from_pretrained(path, torch_dtype=dtype)
    sd = read_state_dict(_weight_files(path)[0], dtype)
    config = umt5_config_from_official(sd)
    model = _meta_model(lambda: UMT5EncoderModel(config))
    return _load_into(model, [(path, t5_official_to_umt5(sd))], lambda s: s, path, dtype)


# ----------------------------------------------------------------------------------------------
# Image encoder: official open-clip XLM-R ViT-H visual tower -> transformers CLIPVisionModel
# ----------------------------------------------------------------------------------------------
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


def load_image_encoder(path: str | Path, dtype: torch.dtype | None = None, num_heads: int | None = None):
    from transformers import CLIPVisionModel

    path = Path(path)
    kind = expect_kind(path, "image_encoder")
    if kind == "transformers-clip":
        return CLIPVisionModel.from_pretrained(path, torch_dtype=dtype)
    sd = read_state_dict(_weight_files(path)[0], dtype)
    config = clip_config_from_official(sd, num_heads)
    converted = clip_official_to_transformers(sd)
    model = _meta_model(lambda: CLIPVisionModel(config))
    if not any(k.startswith("vision_model.") for k in model.state_dict()):  # transformers >= 5
        converted = {k.removeprefix("vision_model."): v for k, v in converted.items()}
    # the official tower has no post-norm; CLIPVisionModel's is unused for our features: identity
    for name in ("weight", "bias"):
        key = next(k for k in model.state_dict() if k.endswith(f"post_layernorm.{name}"))
        if key not in converted:
            converted[key] = (torch.ones if name == "weight" else torch.zeros)(config.hidden_size, dtype=dtype or torch.float32)
    return _load_into(model, [(path, converted)], lambda s: s, path, dtype)


def clip_image_processor(image_size: int):
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, image_mean=CLIP_MEAN, image_std=CLIP_STD)


# ----------------------------------------------------------------------------------------------
# Whole pipelines
# ----------------------------------------------------------------------------------------------
COMPONENT_LOADERS = {"transformer": load_transformer, "vae": load_vae, "text_encoder": load_text_encoder, "image_encoder": load_image_encoder}


def official_component_paths(root: Path) -> dict[str, Path]:
    paths = {"transformer": root, **{k: root / v for k, v in OFFICIAL_FILES.items()}}
    missing = [str(p) for k, p in paths.items() if not p.exists()]
    if missing:
        raise CheckpointError(f"The official MAGREF folder {root} lacks {', '.join(missing)}.", "download the complete release.")
    return paths


def load_official_pipeline(root: str | Path, dtype: torch.dtype | None = None, shift: float = 3.0, clip_heads: int | None = None):
    from transformers import AutoTokenizer

    from .pipeline import MagrefPipeline
    from .schedulers import make_scheduler

    root = Path(root)
    paths = official_component_paths(root)
    image_encoder = load_image_encoder(paths["image_encoder"], dtype, clip_heads)
    return MagrefPipeline(
        tokenizer=AutoTokenizer.from_pretrained(paths["tokenizer"]),
        text_encoder=load_text_encoder(paths["text_encoder"], dtype),
        vae=load_vae(paths["vae"], dtype),
        scheduler=make_scheduler("unipc", shift),
        image_encoder=image_encoder,
        transformer=load_transformer(paths["transformer"], dtype),
        image_processor=clip_image_processor(image_encoder.config.image_size),
    )


def _library_of(obj) -> str:
    return type(obj).__module__.split(".")[0]


def _load_component(name: str, path: Path, dtype, clip_heads: int | None):
    if name == "image_encoder":
        return load_image_encoder(path, dtype, clip_heads)
    return COMPONENT_LOADERS[name](path, dtype)


def convert(
    src: str | Path,
    dst: str | Path,
    component: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "5GB",
    clip_heads: int | None = None,
    log=print,
) -> Path:
    """Official (or single-file) checkpoint -> diffusers/transformers folder(s).

    Whole folders are converted one component at a time, each saved and freed before the next,
    so peak host memory is the largest component, not the whole pipeline."""
    import gc

    from .schedulers import make_scheduler

    src, dst = resolve(src), Path(dst)
    if component is not None:
        if component not in COMPONENT_LOADERS:
            raise CheckpointError(f"Unknown component {component!r}.", f"use one of {', '.join(COMPONENT_LOADERS)}.")
        model = _load_component(component, src, dtype, clip_heads)
        model.save_pretrained(dst, max_shard_size=max_shard_size, safe_serialization=True)
        log(f"wrote {component} ({type(model).__name__}) to {dst}")
        return dst
    kind = detect_kind(src)
    if kind != "official-magref":
        raise CheckpointError(
            f"{src} is {KIND_DESCRIPTIONS.get(kind, kind)}, not the official MAGREF folder.",
            "pass the official folder, or convert one part with --component transformer|vae|text_encoder|image_encoder.",
        )
    from diffusers import __version__ as diffusers_version
    from transformers import AutoTokenizer

    paths = official_component_paths(src)
    index: dict = {"_class_name": "MagrefPipeline", "_diffusers_version": diffusers_version}
    for name in COMPONENTS:
        model = _load_component(name, paths[name], dtype, clip_heads)
        model.save_pretrained(dst / name, max_shard_size=max_shard_size, safe_serialization=True)
        index[name] = [_library_of(model), type(model).__name__]
        if name == "image_encoder":
            processor = clip_image_processor(model.config.image_size)
            processor.save_pretrained(dst / "image_processor")
            index["image_processor"] = ["transformers", type(processor).__name__]
        log(f"wrote {name} to {dst / name}")
        del model
        gc.collect()
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    tokenizer.save_pretrained(dst / "tokenizer")
    index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    scheduler = make_scheduler("unipc", 3.0)
    scheduler.save_pretrained(dst / "scheduler")
    index["scheduler"] = ["magref.schedulers", type(scheduler).__name__]
    (dst / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    log(f"wrote MagrefPipeline folder {dst}")
    return dst


# ----------------------------------------------------------------------------------------------
# The official transformer layout, for synthetic checkpoints (memory benchmarks, tests)
# ----------------------------------------------------------------------------------------------
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
