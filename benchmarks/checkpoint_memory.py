"""Peak host memory of converting and loading the real 14B transformer layout.

Writes a synthetic official-layout MAGREF transformer (real 14B shapes and key names, random
bf16 weights, one block per shard, written lazily), then measures the peak RSS of, each in a
fresh process:
  - the imports alone (baseline),
  - `magref convert SRC DST --component transformer --dtype bf16`,
  - loading the official layout with magref.checkpoints.load_transformer(..., bfloat16),
  - loading the converted folder with plain diffusers WanTransformer3DModel.from_pretrained.
The goal: no more than one copy of the weights in the target dtype (ratio ~1 after baseline).

    python benchmarks/checkpoint_memory.py --layers 10          # 10 of 40 layers: ~8.5 GB bf16
    python benchmarks/checkpoint_memory.py --layers 40          # the full 14B (needs ~30 GB RAM)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# safetensors maps files lazily: a load that never reads its weights shows almost no RSS. Reading
# every weight once (as a forward pass does) makes the figure honest.
TOUCH = "print(sum(float(p.float().abs().sum()) for p in m.parameters()) > 0)"

MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_gib(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` under a fresh wrapper; returns (peak RSS of the child in GiB, seconds)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    rc, kib = out.stdout.strip().splitlines()[-1].split()
    if rc != "0":
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-2000:]}")
    return int(kib) / 2**20, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--work-dir", default=str(Path.home() / ".cache" / "magref" / "bench-checkpoint"))
    ap.add_argument("--max-shard-size", default="2GB")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    args = ap.parse_args()

    import torch

    from magref.checkpoints import OFFICIAL_14B_I2V, write_synthetic_official_transformer

    work = Path(args.work_dir)
    src, dst = work / f"official-{args.layers}L", work / f"converted-{args.layers}L"
    shutil.rmtree(dst, ignore_errors=True)
    cfg = {**OFFICIAL_14B_I2V, "num_layers": args.layers}
    t0 = time.perf_counter()
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        write_synthetic_official_transformer(src, cfg, torch.bfloat16)
    index = json.loads((src / "diffusion_pytorch_model.safetensors.index.json").read_text())
    weights_gib = index["metadata"]["total_size"] / 2**30
    write_s = time.perf_counter() - t0

    py = sys.executable
    rows = []
    base, _ = peak_rss_gib([py, "-c", "import torch, diffusers, magref.checkpoints"])
    rows.append(("imports only (baseline)", base, None))
    for label, cmd in (
        ("magref convert --component transformer --dtype bf16",
         [py, "-m", "magref.cli", "convert", str(src), str(dst), "--component", "transformer", "--dtype", "bf16", "--max-shard-size", args.max_shard_size]),
        ("load official layout (magref.checkpoints.load_transformer, bf16), every weight read",
         [py, "-c", f"import torch; from magref.checkpoints import load_transformer; m = load_transformer({str(src)!r}, torch.bfloat16); {TOUCH}"]),
        ("load converted (diffusers WanTransformer3DModel.from_pretrained, bf16), every weight read",
         [py, "-c", "import torch; from diffusers import WanTransformer3DModel; "
                    f"m = WanTransformer3DModel.from_pretrained({str(dst)!r}, torch_dtype=torch.bfloat16); {TOUCH}"]),
    ):
        rss, seconds = peak_rss_gib(cmd)
        rows.append((label, rss, seconds))

    print(f"\nSynthetic official MAGREF transformer: {args.layers} of 40 layers, real 14B widths, "
          f"bf16 weights {weights_gib:.2f} GiB (written in {write_s:.0f} s)\n")
    print("| step | peak RSS (GiB) | (peak - baseline) / weights | time (s) |")
    print("|---|---|---|---|")
    for label, rss, seconds in rows:
        ratio = "" if seconds is None else f"{(rss - base) / weights_gib:.2f}"
        print(f"| {label} | {rss:.2f} | {ratio} | {'' if seconds is None else f'{seconds:.0f}'} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
