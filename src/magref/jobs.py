"""Generation jobs: one video with its sidecar, and resumable batches of them.

A job is validated completely (references readable, sizes, frames, layout) before any model
work starts, so bad input never leaves a partial output. Outputs are written atomically, mp4
first and the sidecar JSON last; a batch skips every item whose sidecar says complete and whose
mp4 matches it, so a killed batch resumes without redoing or corrupting anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .composition import RegionLayout, check_canvas_size, compose_references, grid_size_for
from .conditioning import check_num_frames
from .errors import MagrefInputError
from .io import is_complete, load_reference, sha256_file, sidecar_path, write_json, write_video
from .defaults import DEFAULTS, DROP_FIRST_FRAMES

SOLVER_CHOICES = ("unipc", "dpm++")


@dataclass
class GenerationSettings:
    prompt: str
    refs: list[str]
    negative_prompt: str | None = None
    height: int = DEFAULTS["height"]
    width: int = DEFAULTS["width"]
    frames: int = DEFAULTS["num_frames"]
    steps: int = DEFAULTS["num_inference_steps"]
    guidance: float = DEFAULTS["guidance_scale"]
    shift: float = DEFAULTS["shift"]
    seed: int = DEFAULTS["seed"]
    solver: str = "unipc"
    layout: str | dict | None = None  # layout file path or dict (see RegionLayout.from_json)
    layout_seed: int | None = None
    fps: float = DEFAULTS["fps"]
    keep_first_frames: bool = False

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def validate(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise MagrefInputError("The prompt is empty.", "pass a text prompt with --prompt.")
        check_canvas_size(self.height, self.width)
        check_num_frames(self.frames)
        if not self.refs:
            raise MagrefInputError("No reference image was given.", "pass 1 to 8 images with --ref.")
        if self.layout is None:
            grid_size_for(len(self.refs))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise MagrefInputError(f"Step count {self.steps} is not a positive integer.", "use e.g. --steps 40.")
        if self.solver not in SOLVER_CHOICES:
            raise MagrefInputError(f"Unknown solver {self.solver!r}.", f"use one of {', '.join(SOLVER_CHOICES)}.")
        if self.shift <= 0:
            raise MagrefInputError(f"Shift {self.shift} must be positive.", "use e.g. --shift 3.0 (480p) or 5.0 (720p).")
        if self.fps <= 0:
            raise MagrefInputError(f"fps {self.fps} must be positive.", "use e.g. --fps 15.")
        drop = 0 if self.keep_first_frames else DROP_FIRST_FRAMES
        if self.frames <= drop:
            raise MagrefInputError(
                f"{self.frames} frames minus the {drop} dropped first frames leaves no frame.",
                "use --frames 5 or more, or --keep-first-frames.",
            )

    def load(self):
        """Validate, read the references and resolve the layout: everything that can fail on
        user input, done before any model is touched."""
        self.validate()
        images = [load_reference(p) for p in self.refs]
        layout = None
        if self.layout is not None:
            layout = RegionLayout.from_json(self.layout, self.height, self.width)
        composition = compose_references(images, self.height, self.width, layout=layout, layout_seed=self.layout_seed)
        return images, composition


def run_job(
    pipe, settings: GenerationSettings, out_path: str | Path, model: str, fingerprint: str, prepared=None, acceleration: dict | None = None,
    write: bool = True, loras: list[dict] | None = None,
) -> dict:
    """Generate one video to `out_path` (mp4) with its sidecar; returns the sidecar dict.
    `write=False` (the non-zero ranks of a context-parallel run) computes without writing;
    `loras`: the fused LoRAs' records (models.apply_loras), kept under the sidecar's model."""
    import torch

    from .pipeline import to_uint8_frames

    out_path = Path(out_path)
    t0 = time.perf_counter()
    images, composition = prepared if prepared is not None else settings.load()
    t_prep = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    acceleration = dict(acceleration or {"preset": "quality"})
    if acceleration.get("cache") == "magcache":  # its ratios depend on the steps and shift of this job
        from .acceleration import mag_cache

        step_cache = mag_cache(pipe, fingerprint, settings.steps, settings.shift, settings.solver, acceleration.get("cache_threshold"))
    else:
        step_cache = contextlib.nullcontext({})
    with step_cache as cache_info:
        result = pipe(
            prompt=settings.prompt,
            references=images,
            negative_prompt=settings.negative_prompt,
            height=settings.height,
            width=settings.width,
            num_frames=settings.frames,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            shift=settings.shift,
            solver=settings.solver,
            layout=composition.layout,
            generator=generator,
            drop_first_frames=0 if settings.keep_first_frames else DROP_FIRST_FRAMES,
            output_type="np",
        )
    t_gen = time.perf_counter()
    if not write:
        return {}
    frames = to_uint8_frames(result.frames[0])
    write_video(out_path, frames, settings.fps)
    t_write = time.perf_counter()
    sidecar = {
        "status": "complete",
        "magref_version": __version__,
        "settings": dataclasses.asdict(settings),
        "negative_prompt_used": settings.negative_prompt if settings.negative_prompt is not None else "magref default (Wan + camera shake)",
        "model": {"id": model, "fingerprint": fingerprint, **({"loras": loras} if loras else {})},
        "acceleration": acceleration | cache_info,
        "layout": composition.layout.to_dict(composition.spatial_stride),
        "output": {
            "file": out_path.name,
            "frames": int(frames.shape[0]),
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
            "fps": settings.fps,
            "bytes": out_path.stat().st_size,
            "sha256": sha256_file(out_path),
        },
        "timings_s": {
            "prepare": round(t_prep - t0, 4),
            "generate": round(t_gen - t_prep, 4),
            "write_video": round(t_write - t_gen, 4),
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(pipe._execution_device)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(sidecar_path(out_path), sidecar)
    return sidecar


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
@dataclass
class BatchItem:
    id: str
    settings: GenerationSettings
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _resolve_ref(ref: str, base: Path) -> str:
    p = Path(ref).expanduser()
    if p.is_absolute() or p.exists():
        return str(p)
    candidate = base / p
    return str(candidate) if candidate.exists() else str(p)


def parse_batch(path: str | Path, defaults: dict[str, Any]) -> list[BatchItem]:
    """Read the official `name@@prompt@@img1@@img2...` format or JSONL
    (`{"id", "prompt", "refs": [...], <any generate option>}`), one item per line.
    Relative image paths are tried from the current folder, then from the batch file's folder."""
    path = Path(path)
    if not path.is_file():
        raise MagrefInputError(f"Batch file {path} does not exist.", "check the path.")
    base = path.parent
    items: list[BatchItem] = []
    names = GenerationSettings.field_names()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MagrefInputError(f"{where} is not valid JSON ({e.msg}).", "write one JSON object per line.") from None
            unknown = set(obj) - names - {"id"}
            if unknown:
                raise MagrefInputError(
                    f"{where} has unknown key(s) {sorted(unknown)}.", f"use id, prompt, refs and generate options: {sorted(names - {'prompt', 'refs'})}."
                )
            if "id" not in obj or "prompt" not in obj or "refs" not in obj:
                raise MagrefInputError(f"{where} needs 'id', 'prompt' and 'refs'.", 'write {"id": "a", "prompt": "...", "refs": ["a.png"]}.')
            item_id, fields = str(obj.pop("id")), obj
        else:
            parts = line.split("@@")
            if len(parts) < 3:
                raise MagrefInputError(f"{where} is not 'name@@prompt@@image[@@image...]'.", "give a name, a prompt and at least one image.")
            item_id = parts[0].strip()
            fields = {"prompt": parts[1].strip(), "refs": [p.strip() for p in parts[2:] if p.strip()]}
        settings_kwargs = {**defaults, **fields}
        settings_kwargs["refs"] = [_resolve_ref(r, base) for r in settings_kwargs["refs"]]
        if isinstance(settings_kwargs.get("layout"), str):
            settings_kwargs["layout"] = _resolve_ref(settings_kwargs["layout"], base)
        safe = _SAFE_ID.sub("_", item_id).strip("._") or f"item{lineno}"
        try:
            settings = GenerationSettings(**settings_kwargs)
        except TypeError as e:
            raise MagrefInputError(f"{where}: {e}.", "check the item's options.") from None
        items.append(BatchItem(safe, settings, lineno))
    seen: dict[str, int] = {}
    for it in items:
        if it.id in seen:
            raise MagrefInputError(f"{path}: id {it.id!r} is used on lines {seen[it.id]} and {it.line}.", "give every item its own id.")
        seen[it.id] = it.line
    if not items:
        raise MagrefInputError(f"Batch file {path} has no items.", "add one item per line.")
    return items


def check_items(items: list[BatchItem]) -> None:
    """Settings valid and every reference readable, for every item; errors name the item."""
    for it in items:
        try:
            it.settings.validate()
            for r in it.settings.refs:
                load_reference(r)
        except MagrefInputError as e:
            raise MagrefInputError(f"Batch item {it.id!r} (line {it.line}): {e.problem}", e.fix) from None


def batch_video(out_dir: str | Path, item: BatchItem) -> Path:
    return Path(out_dir) / f"{item.id}.mp4"


def run_batch(
    pipe, items: list[BatchItem], out_dir: str | Path, model: str, fingerprint: str, log=print, acceleration: dict | None = None, write: bool = True,
    loras: list[dict] | None = None,
) -> dict:
    """Generate every item not yet complete; returns counts. Check the items with `check_items`
    first (before loading the model), so that a bad item stops the batch before any work. `pipe`
    may be None when every item is complete."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    for it in tqdm(items, desc="batch", unit="video", file=sys.stderr):
        video = batch_video(out_dir, it)
        if is_complete(video):
            skipped += 1
            continue
        run_job(pipe, it.settings, video, model, fingerprint, acceleration=acceleration, write=write, loras=loras)
        done += 1
    if write:
        log(f"batch: {done} generated, {skipped} already complete, {len(items)} total in {out_dir}")
    return {"generated": done, "skipped": skipped, "total": len(items)}
