"""`magref convert`: an official release or one component -> a MagrefPipeline / diffusers / transformers folder."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
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
    src, dst = resolve(src), Path(dst)
    _check_destination(dst)
    max_shard_size = _shard_size(max_shard_size)
    if component is not None:
        if component not in COMPONENT_LOADERS:
            raise CheckpointError(f"Unknown component {component!r}.", f"use one of {', '.join(COMPONENT_LOADERS)}.")
        model = _load_component(component, src, dtype, clip_heads)
        with _folder_written_whole(dst) as tmp:
            model.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
        log(f"wrote {component} ({type(model).__name__}) to {dst}")
        return dst
    kind = detect_kind(src)
    if kind != "official-magref":
        raise CheckpointError(
            f"{src} is {KIND_DESCRIPTIONS.get(kind, kind)}, not the official MAGREF folder.",
            "pass the official folder, or convert one part with --component transformer|vae|text_encoder|image_encoder.",
        )
    with _folder_written_whole(dst) as tmp:
        _convert_official(src, tmp, dtype, max_shard_size, clip_heads, log)
    log(f"wrote MagrefPipeline folder {dst}")
    return dst


def _check_destination(dst: Path) -> None:
    if dst.is_file():
        raise CheckpointError(f"The destination {dst} is a file.", "name a new folder to write the converted model into.")
    if dst.is_dir() and any(dst.iterdir()):
        raise CheckpointError(f"The destination folder {dst} is not empty.", "name a new folder, or empty this one first.")
    from ..io import check_output_dir

    check_output_dir(dst.parent, what="The destination's folder")


_SIZE = re.compile(r"^\d+(\.\d+)?(KB|MB|GB|TB)$")  # what huggingface_hub's size parser reads


def _shard_size(size) -> int | str:
    """The shard size as the savers take it: whole bytes as an int, or e.g. '5GB'."""
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size.strip())
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    text = size.strip().upper().replace(" ", "") if isinstance(size, str) else ""
    if not _SIZE.match(text) or float(re.sub(r"[^\d.]", "", text)) <= 0:
        raise CheckpointError(f"--max-shard-size {size!r} is not a size.", "write it like 5GB, 500MB or 10000000 (bytes).")
    return text


@contextmanager
def _folder_written_whole(dst: Path):
    """Write into a hidden folder beside `dst`, renamed to `dst` only when complete: a failure or
    a kill never leaves a half-converted model under the name asked for."""
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a kill's leftovers
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.is_dir():
        dst.rmdir()  # empty (checked before)
    tmp.replace(dst)


def _convert_official(src: Path, dst: Path, dtype, max_shard_size, clip_heads, log) -> None:
    """Whole folders are converted one component at a time, each saved and freed before the next."""
    import gc

    from ..schedulers import make_scheduler
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
        log(f"converted {name}")
        del model
        gc.collect()
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    tokenizer.save_pretrained(dst / "tokenizer")
    index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    scheduler = make_scheduler("unipc", 3.0)
    scheduler.save_pretrained(dst / "scheduler")
    index["scheduler"] = ["magref.schedulers", type(scheduler).__name__]
    (dst / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
