"""Checkpoints: detect what a path holds and load it into MagrefPipeline components.

Supported inputs:
- the official MAGREF folder: `config.json` (`_class_name: WanModel`) + sharded safetensors,
  `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`,
  `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `google/umt5-xxl` tokenizer folder;
- diffusers folders (a whole MagrefPipeline / Wan I2V pipeline, or one component);
- single-file transformers (official or diffusers key names, bf16/fp8 safetensors).

Modules: `detect` (what a path holds), `weights` (reading shards; building on the meta device),
`keymaps` (official -> diffusers / transformers keys and configs), `components` (each component,
and the official release as a pipeline), `convert` (`magref convert`), `synthetic` (official-layout
checkpoints with random weights, for tests and benchmarks).

Transformer and VAE keys are converted with diffusers' own functions. Memory: weights are read
shard by shard (safetensors `safe_open`, `.pth` with mmap) into a model built on the meta device
and assigned in place, so host RAM holds one copy in the target dtype.
"""

from .components import (  # noqa: F401
    COMPONENT_LOADERS,
    load_image_encoder,
    load_official_pipeline,
    load_text_encoder,
    load_transformer,
    load_vae,
    official_component_paths,
)
from .convert import convert  # noqa: F401
from .detect import (  # noqa: F401
    COMPONENT_KINDS,
    COMPONENTS,
    KIND_DESCRIPTIONS,
    OFFICIAL_FILES,
    detect_kind,
    expect_kind,
    resolve,
)
from .keymaps import (  # noqa: F401
    CLIP_HEADS_BY_WIDTH,
    clip_config_from_official,
    clip_official_to_transformers,
    t5_official_to_umt5,
    transformer_config_from_official,
    umt5_config_from_official,
)
from .synthetic import (  # noqa: F401
    OFFICIAL_14B_I2V,
    official_transformer_shapes,
    write_synthetic_official_transformer,
)
from .weights import WEIGHT_SUFFIXES, iter_shards, peek_keys, read_state_dict  # noqa: F401
