"""What a path holds: an official MAGREF folder, a diffusers folder, or one component (by its keys)."""

from __future__ import annotations

import json
import re
from pathlib import Path


from ..errors import CheckpointError
from .weights import WEIGHT_SUFFIXES, _weight_files, peek_keys


OFFICIAL_FILES = {
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "tokenizer": "google/umt5-xxl",
}


COMPONENTS = ("transformer", "vae", "text_encoder", "image_encoder")


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
