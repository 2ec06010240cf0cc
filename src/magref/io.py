"""Files in and out: reference images, mp4 videos, JSON sidecars, all written atomically.

Atomic = write to a temporary file in the destination folder, fsync, then `os.replace`; a
process killed at any moment leaves either the old state or the complete new file, never a
truncated one. The sidecar JSON is written last and marks a video as complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MagrefInputError

SIDECAR_VERSION = 1


def load_reference(path: str | os.PathLike) -> Image.Image:
    """Open a reference image fully (so a truncated file fails here, not mid-generation)."""
    p = Path(path)
    if not p.exists():
        raise MagrefInputError(f"Reference image {p} does not exist.",
                               "check the path (a --ref is relative to the current folder; a batch item's refs to the batch file's folder).")
    if not p.is_file():
        raise MagrefInputError(f"Reference {p} is not a file.", "pass an image file (PNG, JPEG, WebP).")
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_REFERENCE_PIXELS:
                raise MagrefInputError(f"Reference {p} is {im.width}x{im.height} pixels, over the limit of {MAX_REFERENCE_PIXELS:,}.",
                                       "downscale it first: the canvas holds it at a few hundred pixels a side anyway.")
            im.load()
            image = ImageOps.exif_transpose(im)  # a phone photo's orientation tag, applied as any viewer does
            image = _to_8bit(image if image is not im else im.copy())
    except Image.DecompressionBombError as e:
        raise MagrefInputError(f"Reference {p} declares a size too large to decode safely ({e}).", "pass a normal-sized image.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, MagrefInputError):
            raise
        raise MagrefInputError(
            f"Reference {p} is not a readable image ({type(e).__name__}: {e}).",
            "re-export it as PNG or JPEG, or pass another file.",
        ) from None
    if image.width < 1 or image.height < 1:
        raise MagrefInputError(f"Reference {p} has no pixels.", "pass a non-empty image.")
    return image


MAX_REFERENCE_PIXELS = 64_000_000  # 8000x8000; Pillow's own bomb check stops far larger claims first


def _to_8bit(image: Image.Image) -> Image.Image:
    """High bit depth and float images scaled to 8 bits: Pillow's convert('RGB') clips 16-bit
    values (a 16-bit PNG composes as white) and truncates floats in [0, 1] to black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        a = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0  # floats in [0, 1], or already 0-255
        return Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def _first_line(e: OSError) -> str:
    return e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]


def _write_fix(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there, or choose another output place, then rerun."
    return "choose another output place (one you can write to), then rerun."


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` atomically."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name ends in the real suffix: ffmpeg chooses the container from it.
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".part" + (suffix if suffix is not None else dest.suffix), dir=dest.parent)
    except OSError as e:  # checked before the work (check_output_dir); a folder can still change or fill up
        raise MagrefInputError(f"{dest} cannot be written ({_first_line(e)}).", _write_fix(e)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs should look like any file
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except OSError as e:  # e.g. the disk filled up, or ffmpeg died of it (a broken pipe, its whole log in the message)
        raise MagrefInputError(f"{dest} could not be written ({_first_line(e)}).", _write_fix(e)) from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_png(path: str | os.PathLike, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write (F, H, W, 3) uint8 frames as H.264 (yuv420p) mp4 through imageio-ffmpeg."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    _, h, w, _ = frames.shape
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",  # the pixel format every player decodes
            macro_block_size=2,  # yuv420p needs even sides; our sizes are multiples of 16
            quality=8,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        if tmp.stat().st_size == 0:
            raise RuntimeError(f"ffmpeg wrote no data for {path}")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 to (F, H, W, 3) uint8 (used by tests and the benchmark)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(video_path: str | os.PathLike) -> Path:
    return Path(video_path).with_suffix(".json")


def check_output_video(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output that could not be written or would overwrite what is
    not ours: not .mp4, a folder of that name, a parent that is a file or not writable, or a
    sidecar name taken by a JSON file that magref did not write."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise MagrefInputError(f"Output {path} does not end in .mp4.", "name the output like out.mp4.")
    if path.is_dir():
        raise MagrefInputError(f"Output {path} is a folder.", "name a file inside it, e.g. --out " + str(path / "video.mp4") + ".")
    check_output_dir(path.parent, what="Output folder")
    side = sidecar_path(path)
    if side.exists() and not _is_magref_sidecar(side):
        raise MagrefInputError(f"{side} exists and is not a magref sidecar; writing {path.name} would overwrite it.",
                               "choose another --out name, or move that file.")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "Output folder") -> Path:
    """The folder, or its nearest existing parent, must be a writable folder."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise MagrefInputError(f"{what} {path} cannot be made: {probe} is a file.", "choose another output place.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MagrefInputError(f"{what} {path} is not writable ({probe} does not allow it).", "choose a place you can write to.")
    # os.access answers for the permission bits only: root passes them everywhere, and a read-only
    # mount or a pseudo file system (/sys, /proc) refuses the write itself, after the work is done
    try:
        fd, name = tempfile.mkstemp(prefix=".magref-write-check.", dir=probe)
    except OSError as e:
        raise MagrefInputError(f"{what} {path} is not writable: a file made in {probe} was refused ({_first_line(e)}).",
                               "choose a place you can write to.") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return path


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str, holder: str, fix: str) -> Iterator[bool]:
    """Held while this process is the one writer of `folder` (a batch's videos, a training run):
    `flock` on `folder/name`, an OS lock that a killed process releases, so a crash never leaves a
    stale lock. The file records `holder` (e.g. "magref train") and the PID for the refusal that
    another process gets; `fix` is that refusal's remedy. The file itself stays (removing a lock
    file that others may have opened is racy). Yields whether the lock is held: False on a file
    system without `flock` (some network mounts), where the work goes on unguarded after a warning,
    so a caller must not do what only a sole writer may (e.g. remove others' temporary files)."""
    import fcntl
    import socket
    import sys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise MagrefInputError(f"{f.read().strip() or 'Another process'} is already writing to {folder}.", fix) from None
        except OSError as e:
            print(f"warning: {folder} cannot be locked ({e.strerror}); make sure no other process writes there", file=sys.stderr)
            held = False
        else:
            held = True
            f.seek(0)
            f.truncate()
            f.write(f"{holder} (pid {os.getpid()} on {socket.gethostname()})")
            f.flush()
        try:
            yield held
        finally:
            if held:
                fcntl.flock(f, fcntl.LOCK_UN)


def _is_magref_sidecar(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(meta, dict) and "magref_version" in meta


def is_complete(video_path: str | os.PathLike) -> bool:
    """A video is complete when its sidecar says so and the mp4 has the recorded size and hash."""
    video_path = Path(video_path)
    side = sidecar_path(video_path)
    if not (video_path.is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    out = meta.get("output", {})
    return (
        meta.get("status") == "complete"
        and out.get("bytes") == video_path.stat().st_size
        and out.get("sha256") == sha256_file(video_path)
    )


def parse_official_line(line: str, where: str) -> tuple[str, str, list[str]]:
    """One line of the official prompt file, `name@@prompt@@image[@@image...]`: (name, prompt,
    image paths as written). Read by `magref batch` and the benchmark's case files alike."""
    parts = [p.strip() for p in line.split("@@")]
    if len(parts) < 3 or not any(parts[2:]):
        raise MagrefInputError(f"{where} is not 'name@@prompt@@image[@@image...]'.", "give a name, a prompt and at least one image.")
    return parts[0], parts[1], [p for p in parts[2:] if p]
