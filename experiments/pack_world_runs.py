"""Pack `world train` runs for the trip back from a lent GPU (at most 8 files of 16 MB): each
run's latest averaged transformer weights in bf16 (7M parameters: 14 MB) and one archive of the
logs, settings and the identity test. unpack: `tar xzf logs.tar.gz`, then place each
<run>.safetensors as <run>/dit/checkpoints/step-N/ema.safetensors (N in the run's state.json)."""

import json
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        for name in ("run.json", "dit.yaml", "timings.json", "dit/metrics.jsonl", "base/transformer/config.json"):
            if (run / name).is_file():
                tar.add(run / name, f"{run.name}/{name}")
        ckpts = sorted(p for p in (run / "dit" / "checkpoints").glob("step-*") if (p / "state.json").is_file() and (p / "ema.safetensors").is_file())
        if ckpts:
            weights = {k: v.to(torch.bfloat16) for k, v in load_file(ckpts[-1] / "ema.safetensors").items()}
            save_file(weights, out / f"{run.name}.safetensors", metadata={"step": ckpts[-1].name})
            tar.add(ckpts[-1] / "state.json", f"{run.name}/dit/checkpoints/{ckpts[-1].name}/state.json")
            print(f"{run.name}: {ckpts[-1].name}")
        elif run.name == "id128" and (run / "model.safetensors").is_file():
            tar.add(run, "id128")
            print("id128: packed")
    for log in runs.glob("*.log"):
        tar.add(log, f"logs/{log.name}")
print(json.dumps({p.name: p.stat().st_size for p in out.iterdir()}))
