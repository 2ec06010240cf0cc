"""The CLI's presets and options end to end on a GPU, on tiny-random: does each one run on CUDA,
how far does its video move from the `quality` preset's, and what does its sidecar record.

    python benchmarks/gpu_presets.py            # on a machine with CUDA
    python benchmarks/gpu_presets.py --only "fast,taylorseer (fast)"   # some variants (quality always runs: the reference)

Each variant is one `magref generate` in its own process (compilation and hooks do not leak
between variants). The frames are compared before H.264: the writer is swapped for np.save, so
the comparison measures the computation, and a machine without ffmpeg can run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "src" / "magref" / "assets" / "examples"
BASE = ["--model", "tiny-random", "--prompt", "A person moves from left to right and a red mug jumps up and down.",
        "--ref", str(EXAMPLES / "character.png"), "--ref", str(EXAMPLES / "mug.png"),
        "--height", "256", "--width", "448", "--frames", "33", "--steps", "20"]
VARIANTS = {  # name: extra CLI arguments
    "quality": [],
    "fast": ["--preset", "fast"],
    "lowmem": ["--preset", "lowmem"],
    "magcache (calibrating)": ["--cache", "magcache"],
    "magcache (reusing ratios)": ["--cache", "magcache"],
    "fbcache": ["--cache", "fbcache"],
    "fp8 weights": ["--fp8"],
    "fp8 compute (fast)": ["--preset", "fast", "--fp8", "compute"],
    "taylorseer (fast)": ["--preset", "fast", "--cache", "taylorseer"],
    "cuDNN attention": ["--attention", "_native_cudnn"],
}


def one(argv: list[str]) -> int:
    """Run the CLI in this process with the video writer replaced by np.save."""
    import magref.jobs
    from magref.cli import main

    def save_frames(path, frames, fps):
        with open(path, "wb") as f:
            np.save(f, frames)

    magref.jobs.write_video = save_frames
    return main(argv)


def run(device: str, only: list[str] | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="magref-gpu-"))
    env = {**os.environ, "MAGREF_CACHE_DIR": str(work / "cache")}  # MagCache calibrates afresh
    ref = None
    print("| variant | exit | seconds (process) | max abs diff vs quality (uint8) | pixels off by > 8 | recorded |")
    print("|---|---|---|---|---|---|")
    for i, (name, extra) in enumerate(VARIANTS.items()):
        if only and name != "quality" and name not in only:
            continue
        out = work / f"v{i}.mp4"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", "generate", *BASE, "--device", device, *extra, "--out", str(out)],
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode or not out.exists():
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
            print(f"| {name} | {proc.returncode} | {seconds:.1f} | failed: {tail} | | |")
            continue
        frames = np.load(out)
        sidecar = json.loads(out.with_suffix(".json").read_text())
        acc = sidecar.get("acceleration", {})
        keep = {k: acc[k] for k in ("preset", "batched_cfg", "compile", "offload", "cache", "calibrating", "fp8", "attention") if k in acc}
        if ref is None:
            ref = frames
        diff = np.abs(frames.astype(int) - ref.astype(int))
        print(f"| {name} | 0 | {seconds:.1f} | {diff.max()} | {(diff > 8).mean():.2%} | {json.dumps(keep)} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        sys.exit(one(sys.argv[2:]))
    import torch

    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"  # --device cpu: check the script
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_presets.py needs CUDA (the CPU paths are covered by the tests); --device cpu checks the script itself.")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; torch {torch.__version__}\n")
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    unknown = set(only or []) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    run(device, only)
