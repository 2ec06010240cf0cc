"""`magref convert`: an official release or one component -> a MagrefPipeline / diffusers / transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..conditioning import clip_image_processor
from ..errors import CheckpointError
from .components import COMPONENT_LOADERS, load_image_encoder, official_component_paths
from .detect import COMPONENTS, KIND_DESCRIPTIONS, detect_kind, resolve


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

    from ..schedulers import make_scheduler

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
