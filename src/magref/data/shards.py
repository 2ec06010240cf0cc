"""Dataset format: a folder of tar shards plus `manifest.json`.

Why tar shards (webdataset layout, `<key>.<ext>` members): one file per few hundred samples
instead of millions of small files, sequential reads, readable by `tar` and by the webdataset
library as is, and writable with the standard library alone. A sample is
    <key>.json            caption, source video, clip start/fps, subjects [{file, box, kind}]
    <key>.frames.mp4      the clip as H.264 (4:4:4, CRF 14: 1/8 (grainy) to 1/950 (flat) of the raw bytes at
                          >= 40 dB PSNR on the clips measured, benchmarks/RESULTS.md), or
    <key>.frames.mkv      the clip as FFV1 (lossless, about a third of raw), or
    <key>.frames.npy      (F, H, W, 3) uint8 raw frames (datasets before codecs; the world's)
    <key>.subject<i>.png  RGBA cut-out of subject i (alpha = its mask)
    <key>.masks.npy       optional (F, H, W) uint8: 1 where any subject is, per frame (the
                          procedural world knows it; `subject_loss_weight` in training needs it)
Shards are written to a temporary name and renamed when complete, so an interrupted
`magref prepare` never leaves a half-written shard behind.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "magref-clips-v1"
MANIFEST = "manifest.json"
# How a shard stores clips: member suffix, PyAV container format, codec, pixel format, options.
# H.264 in 4:4:4 keeps the colour resolution that 4:2:0 would halve (subjects are small); CRF 14
# keeps >= 40 dB even on grainy clips (benchmarks/clip_codecs.py). Masks and cut-outs stay lossless (npy, PNG) whatever the clips use.
CLIP_CODECS = {
    "h264": (".frames.mp4", "mp4", "libx264", "yuv444p", {"crf": "14", "preset": "medium"}),
    "ffv1": (".frames.mkv", "matroska", "ffv1", "bgr0", {}),
    "raw": (".frames.npy", None, None, None, {}),
}


def encode_clip(frames: np.ndarray, codec: str, fps: float = 8.0) -> bytes:
    """(F, H, W, 3) uint8 -> the bytes of one shard member (`CLIP_CODECS`)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    _, container_format, codec_name, pix_fmt, options = CLIP_CODECS[codec]
    buf = io.BytesIO()
    if codec == "raw":
        np.save(buf, frames)
        return buf.getvalue()
    import av
    from fractions import Fraction

    with av.open(buf, mode="w", format=container_format) as out:
        stream = out.add_stream(codec_name, rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def decode_clip(data: bytes, suffix: str) -> np.ndarray:
    """A clip member's bytes -> (F, H, W, 3) uint8."""
    if suffix == ".frames.npy":
        return np.load(io.BytesIO(data))
    import av

    with av.open(io.BytesIO(data)) as src:
        return np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])


@dataclass
class Subject:
    image: Image.Image  # RGBA cut-out
    box: tuple[int, int, int, int]  # where it was in its source frame (x0, y0, x1, y1)
    kind: str  # face | person | object | animal | background


@dataclass
class Sample:
    key: str
    frames: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    subjects: list[Subject]
    meta: dict
    masks: np.ndarray | None = None  # (F, H, W) uint8, 1 where any subject is



def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[Sample], clip_codec: str = "raw") -> None:
    tmp = path.with_name(f".{path.name}.part")
    with tarfile.open(tmp, "w") as tar:
        for s in samples:
            subjects = []
            for i, sub in enumerate(s.subjects):
                buf = io.BytesIO()
                sub.image.save(buf, format="PNG")
                _add(tar, f"{s.key}.subject{i}.png", buf.getvalue())
                subjects.append({"file": f"{s.key}.subject{i}.png", "box": list(sub.box), "kind": sub.kind})
            _add(tar, s.key + CLIP_CODECS[clip_codec][0], encode_clip(s.frames, clip_codec, s.meta.get("fps", 8.0)))
            if s.masks is not None:
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(s.masks, dtype=np.uint8))
                _add(tar, f"{s.key}.masks.npy", buf.getvalue())
            _add(tar, f"{s.key}.json", json.dumps({**s.meta, "caption": s.caption, "subjects": subjects}, ensure_ascii=False).encode())
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Buffers samples into numbered tar shards and keeps `manifest.json` in step: each shard is
    written whole (atomically), then recorded, so a stopped run leaves a consistent dataset.
    `manifest` is the dataset's manifest so far (new: format, settings, no shards);
    `on_flush` runs after each shard is recorded (`magref prepare` logs finished videos there);
    `record_videos` also lists each shard's source videos (`meta["source"]`) in its manifest entry,
    so that a process stopped between the two still counts them as finished on its rerun.
    `resumable=False` writes the manifest only at the end (`close`), so its presence means the
    dataset is complete (a build that is redone, not resumed, when interrupted)."""

    def __init__(self, root: str | Path, manifest: dict, samples_per_shard: int, on_flush=None, resumable: bool = True, clip_codec: str = "raw",
                 manifest_name: str = MANIFEST, shard_prefix: str = "shard-", record_videos: bool = False):
        self.root, self.manifest, self.samples_per_shard, self.on_flush = Path(root), manifest, samples_per_shard, on_flush
        self.record_videos = record_videos
        self.resumable, self.clip_codec = resumable, clip_codec
        self.manifest_name, self.shard_prefix = manifest_name, shard_prefix  # one process of several writes its own
        self.buffer: list[Sample] = []

    def add(self, sample: Sample) -> None:
        self.buffer.append(sample)

    def flush_if_full(self) -> None:
        if len(self.buffer) >= self.samples_per_shard:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write what is buffered as the next shard (if anything), and the manifest (every time
        when resumable, else on the final flush)."""
        from ..io import write_json

        if self.buffer:
            taken = {sh["file"] for sh in self.manifest["shards"]}
            n = len(self.manifest["shards"])
            while (name := f"{self.shard_prefix}{n:05d}.tar") in taken:  # a single-process rerun after a merged multi-process one
                n += 1
            write_shard(self.root / name, self.buffer, self.clip_codec)
            entry = {"file": name, "keys": [s.key for s in self.buffer]}
            if self.record_videos:
                entry["videos"] = sorted({s.meta["source"] for s in self.buffer})
            self.manifest["shards"].append(entry)
            self.buffer = []
        self.manifest["num_samples"] = sum(len(s["keys"]) for s in self.manifest["shards"])
        if self.resumable or final:
            write_json(self.root / self.manifest_name, self.manifest)
        if self.on_flush is not None:
            self.on_flush()

    def close(self) -> None:
        self.flush(final=True)


def read_manifest(root: str | Path) -> dict:
    """The manifest of a dataset folder, or of a dataset at a URL (anything fsspec opens: s3://,
    https://, ...; what `data_loading: stream` reads)."""
    from ..errors import MagrefInputError

    if "://" in str(root):
        import fsspec

        path = str(root).rstrip("/") + "/" + MANIFEST
        try:
            with fsspec.open(path, "rb") as f:
                manifest = json.loads(f.read())
        except (OSError, ValueError, ImportError) as e:
            raise MagrefInputError(f"Could not read {path}: {e}", "check the URL and that fsspec can open it (e.g. pip install s3fs).") from None
    else:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise MagrefInputError(f"{root} has no {MANIFEST}: it is not a magref dataset.", "create one with `magref prepare VIDEOS_DIR OUT_DIR`.")
        manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise MagrefInputError(f"{path} is format {manifest.get('format')!r}, expected {FORMAT!r}.", "re-create the dataset with this magref version.")
    return manifest


def decode_sample(key: str, meta: dict, frames: np.ndarray, subject_files: list[bytes], masks: np.ndarray | None) -> Sample:
    """A sample from its shard members: `meta` as in `<key>.json`, the cut-outs' PNG bytes in its order."""
    meta = dict(meta)
    subjects = []
    for sub, data in zip(meta.pop("subjects"), subject_files):
        image = Image.open(io.BytesIO(data))
        image.load()
        subjects.append(Subject(image, tuple(sub["box"]), sub["kind"]))
    return Sample(key, frames, meta.pop("caption"), subjects, meta, masks)


class ClipDataset:
    """Random access to the samples of a shard folder (tar indexes are built once per shard)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.index: list[tuple[str, str]] = []  # (shard file, key)
        for shard in self.manifest["shards"]:
            self.index += [(shard["file"], key) for key in shard["keys"]]
        self._open: dict[str, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _tar(self, name: str) -> tarfile.TarFile:
        if name not in self._open:
            self._open[name] = tarfile.open(self.root / name, "r")
        return self._open[name]

    def __getitem__(self, i: int) -> Sample:
        shard, key = self.index[i]
        tar = self._tar(shard)
        read = lambda member: tar.extractfile(member).read()  # noqa: E731
        meta = json.loads(read(f"{key}.json"))
        subjects = [read(sub["file"]) for sub in meta["subjects"]]
        return decode_sample(key, meta, self._frames(tar, key), subjects, self.masks(i))

    @staticmethod
    def _frames(tar: tarfile.TarFile, key: str) -> np.ndarray:
        """The clip in whichever codec its shard used (shards of one dataset may differ)."""
        for suffix, *_ in CLIP_CODECS.values():
            try:
                member = tar.getmember(key + suffix)
            except KeyError:
                continue
            return decode_clip(tar.extractfile(member).read(), suffix)
        raise KeyError(f"{key}: no clip in {tar.name}")

    def masks(self, i: int) -> np.ndarray | None:
        """The per-frame subject masks (F, H, W) of sample i, or None where the dataset has none."""
        shard, key = self.index[i]
        try:
            member = self._tar(shard).getmember(f"{key}.masks.npy")
        except KeyError:
            return None
        return np.load(io.BytesIO(self._tar(shard).extractfile(member).read()))

    def caption(self, i: int) -> str:
        """The caption alone, without decoding the frames."""
        return self._meta(i)["caption"]

    def references(self, i: int) -> int:
        """How many subjects sample i has cut out as references, without decoding anything."""
        return len(self._meta(i)["subjects"])

    def _meta(self, i: int) -> dict:
        shard, key = self.index[i]
        return json.loads(self._tar(shard).extractfile(f"{key}.json").read())

    def __getstate__(self):  # picklable for DataLoader workers: reopen tars lazily
        state = dict(self.__dict__)
        state["_open"] = {}
        return state
