"""Generation jobs: one video with its sidecar, and resumable batches of them.

A job runs a `request.GenerationRequest` (validated and composed once, before any model work)
on a `LoadedModel`. Outputs are written atomically, mp4 first and the sidecar JSON last; a batch
skips every item whose sidecar says complete and whose mp4 matches it, so a killed batch
resumes without redoing or corrupting anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import MagrefInputError
from .io import folder_lock, is_complete, parse_official_line, sha256_file, sidecar_path, write_json, write_video
from .request import GenerationRequest, GenerationSettings, ModelSpec


@dataclass
class LoadedModel:
    """A model loaded once (LoRAs fused, accelerated) for any number of jobs."""

    pipe: Any
    spec: ModelSpec
    fingerprint: str
    loras: list[dict]  # what the sidecar records (models.apply_loras)
    acceleration: dict  # what acceleration.accelerate applied
    rank: int = 0  # under torchrun only rank 0 writes
    output_options: dict = dataclasses.field(default_factory=dict)  # AccelerationOptions.output_key: part of each request's fingerprint
    own_videos: bool = False  # under torchrun: this process makes whole videos of its own (item-parallel batches)

    @classmethod
    def load(cls, spec: ModelSpec, options=None) -> "LoadedModel":
        from .acceleration import AccelerationOptions, accelerate
        from .models import load_model

        options = options or AccelerationOptions()
        options.resolve_device()  # a bad --device is input, refused before the weights load
        pipe, fingerprint, records = load_model(spec)
        rank, applied = accelerate(pipe, options)
        return cls(pipe, spec, fingerprint, records, applied, rank, options.output_key(), own_videos=not options.context_parallel)

    @property
    def writes(self) -> bool:
        """Whether this process writes its videos: rank 0 of a context-parallel group; every
        process when each makes videos of its own."""
        return self.own_videos or self.rank == 0


class JobCancelled(Exception):
    """Raised by an `on_step` callback to stop a job at the end of a denoising step; nothing of
    the job is written."""


def run_job(model: LoadedModel, request: GenerationRequest, out_path: str | Path, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Generate one video to `out_path` (mp4) with its sidecar; returns the sidecar dict ({} on
    the ranks of a context-parallel run that compute without writing). `on_step(done, total)` is
    called after every denoising step (progress); it may raise `JobCancelled`."""
    import torch

    from .acceleration import job_step_cache
    from .pipeline import to_uint8_frames

    out_path = Path(out_path)
    settings, composition, pipe = request.settings, request.composition, model.pipe
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)

    def step_end(pipe, i, t, tensors):  # diffusers' callback_on_step_end signature
        on_step(i + 1, settings.steps)
        return {}
    with job_step_cache(pipe, model.acceleration, model.fingerprint, settings.steps, settings.shift, settings.solver) as cache_info:
        result = pipe(
            prompt=settings.prompt,
            composition=composition,
            negative_prompt=settings.negative_prompt,
            height=settings.height,
            width=settings.width,
            num_frames=settings.frames,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            shift=settings.shift,
            solver=settings.solver,
            generator=generator,
            drop_first_frames=settings.drop_first_frames,
            output_type="np",
            context_windows=request.context_windows,
            callback_on_step_end=step_end if on_step is not None else None,
        )
    t_gen = time.perf_counter()
    if not model.writes:
        return {}
    frames = to_uint8_frames(result.frames[0])
    write_video(out_path, frames, settings.fps)
    t_write = time.perf_counter()
    sidecar = {
        "status": "complete",
        "magref_version": __version__,
        "settings": dataclasses.asdict(settings),
        "negative_prompt_used": settings.negative_prompt if settings.negative_prompt is not None else "magref default (Wan + camera shake)",
        "model": {"id": model.spec.id, "fingerprint": model.fingerprint, **({"loras": model.loras} if model.loras else {})},
        "request_fingerprint": request.fingerprint(model.output_options),
        "acceleration": model.acceleration | cache_info,
        "layout": composition.layout.to_dict(composition.spatial_stride),
        # the images themselves, by content: settings.refs are paths as given (relative to where the command ran)
        "references": [{"file": str(Path(p).resolve()), "sha256": h} for p, h in zip(settings.refs, request.reference_sha256)],
        "context_windows": request.context_windows.to_dict() if request.context_windows is not None else None,
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
            "prepare": round(request.prepare_s, 4),
            "generate": round(t_gen - t0, 4),
            "write_video": round(t_write - t_gen, 4),
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(pipe._execution_device)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_unix": round(time.time(), 3),
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
    request: GenerationRequest | None = None  # set by prepare_items
    given_id: str | None = None  # the batch file's id where it is not a safe file name (e.g. "../a" -> "a")

    def warnings(self) -> list[str]:
        """The request's, and a renamed id: the user looks for the video by the id they wrote."""
        renamed = [f"the id {self.given_id!r} is written as {self.id}.mp4 (file names keep letters, digits, '.', '_' and '-')."] if self.given_id else []
        return renamed + (self.request.warnings() if self.request is not None else [])


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _resolve_ref(ref: str, base: Path) -> str:
    p = Path(ref).expanduser()
    if p.is_absolute() or p.exists():
        return str(p)
    candidate = base / p
    return str(candidate) if candidate.exists() else str(p)


def parse_batch(path: str | Path, spec: ModelSpec, options: dict[str, Any]) -> list[BatchItem]:
    """Read the official `name@@prompt@@img1@@img2...` format or JSONL
    (`{"id", "prompt", "refs": [...], <any generate option>}`), one item per line. An item's
    own options win over `options` (the command line's; None = not given), which win over the
    model's defaults. Relative image paths are tried from the current folder, then from the
    batch file's folder."""
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
            item_id, prompt, refs = parse_official_line(line, where)
            fields = {"prompt": prompt, "refs": refs}
        if isinstance(fields["refs"], list):  # anything else is refused, with the item named, by prepare_items
            fields["refs"] = [_resolve_ref(r, base) if isinstance(r, str) else r for r in fields["refs"]]
        if "layout" in fields or "layout_seed" in fields:  # an item's own placement wins over the command line's, whichever kind
            fields.setdefault("layout", None)
            fields.setdefault("layout_seed", None)
        layout = fields.get("layout", options.get("layout"))
        if isinstance(layout, str):
            fields["layout"] = _resolve_ref(layout, base)
        safe = _SAFE_ID.sub("_", item_id).strip("._") or f"item{lineno}"
        try:
            settings = spec.settings(options, **fields)
        except TypeError as e:
            raise MagrefInputError(f"{where}: {e}.", "check the item's options.") from None
        items.append(BatchItem(safe, settings, lineno, given_id=item_id if safe != item_id else None))
    seen: dict[str, int] = {}
    for it in items:
        if it.id in seen:
            raise MagrefInputError(f"{path}: id {it.id!r} is used on lines {seen[it.id]} and {it.line}.", "give every item its own id.")
        seen[it.id] = it.line
    if not items:
        raise MagrefInputError(f"Batch file {path} has no items.", "add one item per line.")
    return items


def prepare_items(items: list[BatchItem], spec: ModelSpec) -> list[BatchItem]:
    """Every item's request, validated and composed once, before any model loads; an error
    names the item."""
    for it in items:
        try:
            it.request = GenerationRequest.prepare(it.settings, spec)
        except MagrefInputError as e:
            where = f"Batch item {it.id!r}" + (f" (line {it.line})" if it.line else "")
            raise MagrefInputError(f"{where}: {e.problem}", e.fix) from None
    return items


def batch_video(out_dir: str | Path, item: BatchItem) -> Path:
    return Path(out_dir) / f"{item.id}.mp4"


def is_done(item: BatchItem, out_dir: str | Path, output_options: dict | None = None) -> bool:
    """Finished for this request: the video is complete (its sidecar and hash agree) and was
    made for the item's request as it stands (settings, references, layout, model, LoRAs, and
    the acceleration options that change the output); a changed item is regenerated, and so is
    one whose sidecar predates request fingerprints."""
    video = batch_video(out_dir, item)
    if not is_complete(video):
        return False
    made_for = json.loads(sidecar_path(video).read_text()).get("request_fingerprint")
    return made_for == item.request.fingerprint(output_options)


def pending(items: list[BatchItem], out_dir: str | Path, output_options: dict | None = None) -> list[BatchItem]:
    return [it for it in items if not is_done(it, out_dir, output_options)]


@contextlib.contextmanager
def batch_lock(out_dir: str | Path, writes: bool = True):
    """One batch at a time in a folder: a second batch into the same folder is refused (it would
    make every item again). Holding the lock, nobody else writes there, so the `.part` files of a
    killed run are removed. Only the writing process (rank 0) locks."""
    if not writes:
        yield
        return
    with folder_lock(out_dir, ".magref-batch.lock", "magref batch", "wait for it to finish (a rerun then resumes), or use another --out-dir.") as held:
        if held:  # a killed run's half-written files (io.atomic_path's names); unlocked, they may be another batch's
            for part in Path(out_dir).glob(".*.part.*"):
                if part.is_file():
                    part.unlink(missing_ok=True)
        yield


def run_batch(model: LoadedModel | None, items: list[BatchItem], out_dir: str | Path, log=print, writes: bool = True) -> dict:
    """Generate every prepared item (`prepare_items`) not yet complete; returns counts. `model`
    may be None when every item is complete (a finished batch rerun loads nothing); `writes`
    says whether this process prints the summary (rank 0 under torchrun; None: nobody, the
    caller sums the processes' counts)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    for it in tqdm(items, desc="batch", unit="video", file=sys.stderr):
        if is_done(it, out_dir, model.output_options if model is not None else None):
            skipped += 1
            continue
        run_job(model, it.request, batch_video(out_dir, it))
        done += 1
    if writes is not None and (model.writes if model is not None and not model.own_videos else writes):
        log(f"batch: {done} generated, {skipped} already complete, {len(items)} total in {out_dir}")
    return {"generated": done, "skipped": skipped, "total": len(items)}
