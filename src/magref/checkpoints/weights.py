"""Reading checkpoint weights shard by shard, and building a model from them without a second copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import CheckpointError


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


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
    def cast(t):
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t
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
