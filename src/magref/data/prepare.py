"""`magref prepare VIDEOS_DIR OUT_DIR`: videos -> clips with captions and subject cut-outs.

Each video is decoded with PyAV, resampled to the target fps, centre-cropped and resized, cut into
non-overlapping clips of F = 4n+1 frames, and its subjects are extracted from the clip's own
frames. Resumable: `progress.jsonl` lists every video whose samples sit in a finished shard; a
rerun skips those. A video that fails to decode is reported and skipped, never fatal.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..conditioning import check_num_frames
from ..errors import MagrefInputError
from .extract import make_extractor
from .shards import FORMAT, MANIFEST, Sample, ShardWriter

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")


@dataclass
class PrepareSettings:
    frames: int = 17
    fps: float = 8.0
    height: int = 64
    width: int = 64
    max_clips_per_video: int = 4
    samples_per_shard: int = 256
    extractor: str = "opencv"
    detector: str | None = None  # detect-segment: detection weights (folder or hub id)
    segmenter: str | None = None  # detect-segment: SAM weights
    detector_threshold: float = 0.2
    clip_codec: str = "h264"  # how shards store clips (shards.CLIP_CODECS): h264 (default), ffv1 (lossless), raw

    def validate(self) -> None:
        check_num_frames(self.frames)
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise MagrefInputError(f"--fps {self.fps} is not a frame rate between 0 and 240.", "use e.g. --fps 8.")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 16 or v % 16 or v > 2048:
                raise MagrefInputError(f"--{name} {v} is not a multiple of 16 between 16 and 2048.", f"use e.g. --{name} 64.")
        if self.max_clips_per_video < 1 or self.samples_per_shard < 1:
            raise MagrefInputError("--max-clips-per-video and --samples-per-shard must be at least 1.", "use e.g. --max-clips-per-video 4.")
        from .shards import CLIP_CODECS

        if self.clip_codec not in CLIP_CODECS:
            raise MagrefInputError(f"--clip-codec {self.clip_codec!r} is not one of {', '.join(CLIP_CODECS)}.", "use --clip-codec h264.")
        if not (math.isfinite(self.detector_threshold) and 0 <= self.detector_threshold <= 1):
            raise MagrefInputError(f"--detector-threshold {self.detector_threshold} is not between 0 and 1.", "use e.g. --detector-threshold 0.2.")


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def load_captions(root: Path) -> dict[str, str]:
    captions = {}
    jsonl = root / "captions.jsonl"
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                    captions[str(obj["video"])] = str(obj["caption"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise MagrefInputError(f"{jsonl}:{n} is not a caption line.",
                                           'write one {"video": "relative/path.mp4", "caption": "..."} object per line.') from None
    return captions


def caption_for(video: Path, root: Path, captions: dict[str, str]) -> str | None:
    for side in (video.with_suffix(".txt"), video.with_suffix(".json")):
        if side.is_file():
            text = side.read_text(encoding="utf-8").strip()
            return json.loads(text)["caption"] if side.suffix == ".json" else text
    rel = video.relative_to(root).as_posix()
    return captions.get(rel, captions.get(video.name))


def decode(video: Path, fps: float, height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """All frames resampled to `fps` (nearest earlier source frame), centre-cropped to the target
    aspect and resized: (N, H, W, 3) uint8, plus the source frame index of each output frame."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or fps)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("no decodable frames")
    duration = len(frames) / src_fps
    idx = [min(len(frames) - 1, int(k * src_fps / fps)) for k in range(max(1, int(duration * fps)))]
    out = []
    for i in idx:
        im = Image.fromarray(frames[i])
        scale = max(width / im.width, height / im.height)
        cw, ch = round(width / scale), round(height / scale)
        left, top = (im.width - cw) // 2, (im.height - ch) // 2
        out.append(np.asarray(im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.Resampling.BICUBIC)))
    return np.stack(out), idx


def _check_settings(manifest: dict, settings: PrepareSettings, out_dir: Path) -> None:
    if {"clip_codec": "raw", **manifest["settings"]} != asdict(settings):  # datasets from before codecs stored raw frames
        raise MagrefInputError(
            f"{out_dir} was prepared with other settings ({manifest['settings']}).", "use a new OUT_DIR, or the same settings to resume."
        )


def finished_videos(out_dir: Path) -> set[str]:
    """Videos finished by any run or process (progress.jsonl and every progress.rank<r>.jsonl),
    and those of every shard a manifest records: a process stopped after writing its manifest and
    before logging progress has finished them too, and doing them again would put their clips in
    the dataset twice. A skipped one (no caption yet, unreadable) is tried again on every rerun."""
    done: set[str] = set()
    for manifest in sorted(out_dir.glob("manifest*.json")):
        for shard in json.loads(manifest.read_text())["shards"]:
            done.update(shard.get("videos", ()))  # datasets from before it was recorded: progress alone
    for progress in sorted(out_dir.glob("progress*.jsonl")):
        for line in progress.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if not entry.get("skipped"):  # a finish is for good, whichever process skipped it before
                    done.add(entry["video"])
    return done


def merge_manifests(out_dir: Path, settings: PrepareSettings) -> dict:
    """One manifest.json from the processes' manifest.rank<r>.json (and what manifest.json held
    before): every shard once, the skips of videos that no process finished."""
    from ..io import write_json

    base_path = out_dir / MANIFEST
    merged = (json.loads(base_path.read_text()) if base_path.is_file()
              else {"format": FORMAT, "settings": asdict(settings), "shards": [], "skipped": []})
    _check_settings(merged, settings, out_dir)
    seen = {s["file"] for s in merged["shards"]}
    skipped = {s["video"]: s for s in merged["skipped"]}
    for part in sorted(out_dir.glob("manifest.rank*.json")):
        m = json.loads(part.read_text())
        merged["shards"] += [s for s in m["shards"] if s["file"] not in seen]
        seen |= {s["file"] for s in m["shards"]}
        skipped.update({s["video"]: s for s in m["skipped"]})
    done = finished_videos(out_dir)
    merged["skipped"] = [s for v, s in sorted(skipped.items()) if v not in done]
    merged["num_samples"] = sum(len(s["keys"]) for s in merged["shards"])
    write_json(base_path, merged)
    return merged


def prepare(videos_dir: str | Path, out_dir: str | Path, settings: PrepareSettings, log=print, rank: int = 0, world: int = 1) -> dict:
    """Videos -> a shard dataset, resumable. With `world` > 1 this process (`rank`) takes every
    world-th video (skipping finished ones) and writes shards, progress and a manifest of its own
    (shard-r<rank>-*.tar, progress.rank<r>.jsonl, manifest.rank<r>.json); `merge_manifests`
    then makes the one manifest.json (`magref prepare --workers N` and torchrun do)."""
    from tqdm.auto import tqdm

    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise MagrefInputError(f"Video folder {videos_dir} does not exist.", "pass the folder holding your videos.")
    settings.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).is_file():
        _check_settings(json.loads((out_dir / MANIFEST).read_text()), settings, out_dir)
    if world == 1 and any(out_dir.glob("manifest.rank*.json")):  # a run of several processes left shards unmerged
        merge_manifests(out_dir, settings)
    suffix = f".rank{rank}" if world > 1 else ""
    manifest_path = out_dir / (f"manifest{suffix}.json" if world > 1 else MANIFEST)
    manifest = (json.loads(manifest_path.read_text()) if manifest_path.is_file()
                else {"format": FORMAT, "settings": asdict(settings), "shards": [], "skipped": []})
    _check_settings(manifest, settings, out_dir)
    progress = out_dir / f"progress{suffix}.jsonl"
    done = finished_videos(out_dir)
    options = {"detector": settings.detector, "segmenter": settings.segmenter, "threshold": settings.detector_threshold}
    extractor = make_extractor(settings.extractor, **(options if settings.extractor == "detect-segment" else {}))
    captions = load_captions(videos_dir)
    videos = find_videos(videos_dir)
    if world > 1:
        # Deal over every video, not over those unfinished: processes start at different times and
        # read `done` at different moments, so a deal over what is left could give a video to none.
        videos = videos[rank::world]
    buffered_videos: list[str] = []  # finished videos whose clips wait in the writer's buffer

    def log_finished():
        with open(progress, "a") as f:
            for v in buffered_videos:
                f.write(json.dumps({"video": v}) + "\n")
        buffered_videos.clear()

    writer = ShardWriter(out_dir, manifest, settings.samples_per_shard, on_flush=log_finished, clip_codec=settings.clip_codec,
                         manifest_name=manifest_path.name, shard_prefix=f"shard-r{rank}-" if world > 1 else "shard-", record_videos=True)

    skipped_now = 0
    for video in tqdm(videos, desc="prepare", unit="video", file=sys.stderr):
        rel = video.relative_to(videos_dir).as_posix()
        if rel in done:
            continue
        caption = caption_for(video, videos_dir, captions)
        try:
            if caption is None:
                raise ValueError("no caption (.txt, .json or captions.jsonl entry)")
            frames, src_idx = decode(video, settings.fps, settings.height, settings.width)
            samples: list[Sample] = []  # written only once the whole video has succeeded
            background = np.median(frames[:: max(1, len(frames) // 64)], axis=0).astype(np.uint8)
            for start in range(0, len(frames) - settings.frames + 1, settings.frames):
                if len(samples) >= settings.max_clips_per_video:
                    break
                clip = frames[start : start + settings.frames]
                subjects = extractor(clip, {"source": str(video), "frame_indices": src_idx[start : start + settings.frames], "background": background})
                if not subjects:
                    continue
                key = f"{Path(rel).with_suffix('').as_posix().replace('/', '__').replace('.', '_')}__{start:06d}"
                samples.append(Sample(key, clip, caption, subjects, {"source": rel, "start": start, "fps": settings.fps}))
            if not samples:
                raise ValueError(f"no clip of {settings.frames} frames with a detected subject")
        except Exception as e:  # a bad video is reported and skipped, never fatal
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"magref prepare: warning: skipping {rel}: {reason}", file=sys.stderr)
            manifest["skipped"] = [s for s in manifest["skipped"] if s["video"] != rel] + [{"video": rel, "reason": reason}]
            skipped_now += 1
            with open(progress, "a") as f:
                f.write(json.dumps({"video": rel, "skipped": True}) + "\n")
            continue
        for sample in samples:
            writer.add(sample)
        buffered_videos.append(rel)
        manifest["skipped"] = [s for s in manifest["skipped"] if s["video"] != rel]  # skipped before, done now
        writer.flush_if_full()
    writer.close()
    who = f" (process {rank} of {world})" if world > 1 else ""
    log(f"prepare{who}: {manifest['num_samples']} samples in {len(manifest['shards'])} shard(s), {len(manifest['skipped'])} video(s) skipped -> {out_dir}")
    return manifest
