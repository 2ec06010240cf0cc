"""Each component loaded from any supported layout, and the whole official release as a MagrefPipeline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..conditioning import clip_image_processor
from ..errors import CheckpointError
from .detect import OFFICIAL_FILES, expect_kind
from .keymaps import (
    _config_from_shapes,
    clip_config_from_official,
    clip_official_to_transformers,
    t5_official_to_umt5,
    transformer_config_from_official,
    umt5_config_from_official,
)
from .weights import _load_into, _meta_model, _weight_files, iter_shards, read_state_dict


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


COMPONENT_LOADERS = {"transformer": load_transformer, "vae": load_vae, "text_encoder": load_text_encoder, "image_encoder": load_image_encoder}


def official_component_paths(root: Path) -> dict[str, Path]:
    paths = {"transformer": root, **{k: root / v for k, v in OFFICIAL_FILES.items()}}
    missing = [str(p) for k, p in paths.items() if not p.exists()]
    if missing:
        raise CheckpointError(f"The official MAGREF folder {root} lacks {', '.join(missing)}.", "download the complete release.")
    return paths


def load_official_pipeline(root: str | Path, dtype: torch.dtype | None = None, shift: float = 3.0, clip_heads: int | None = None):
    from transformers import AutoTokenizer

    from ..pipeline import MagrefPipeline
    from ..schedulers import make_scheduler

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
