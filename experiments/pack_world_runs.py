"""Pack `world train` runs for the trip back from a lent GPU (at most 8 files of 16 MB each): every
run exported as `magref world export` writes it (bf16, the latest checkpoint's averaged weights,
its generation defaults), the parts all runs share (VAE, encoders, tokenizer, scheduler) once in
shared.tar.gz, each run's transformer weights as <run>.safetensors (~14 MB; a wider one in parts,
<run>.partN.safetensors), and one archive of
the logs, settings, transformer configs and the identity test.

    python experiments/pack_world_runs.py RUNS_DIR OUT_DIR        # on the GPU machine
    python experiments/pack_world_runs.py --unpack OUT_DIR MODELS   # here: MODELS/<run>/ are pipeline folders

then e.g. `magref world evaluate --model single=MODELS/single --model multi=MODELS/multi ...`.
"""

import re
import shutil
import sys
import tarfile
from pathlib import Path

TRANSFORMER = "transformer/diffusion_pytorch_model.safetensors"
PART_BYTES = 15 * 2**20


def pack(runs: Path, out: Path) -> None:
    from magref.world.train import export_run

    out.mkdir(parents=True, exist_ok=True)
    exports = out.parent / (out.name + "-exports")
    shared = False
    with tarfile.open(out / "logs.tar.gz", "w:gz") as logs:
        for run in sorted(p for p in runs.iterdir() if p.is_dir()):
            for name in ("run.json", "dit.yaml", "timings.json", "dit/metrics.jsonl"):
                if (run / name).is_file():
                    logs.add(run / name, f"{run.name}/{name}")
            if run.name == "id128" and (run / "model.safetensors").is_file():
                logs.add(run, "id128")
                print("id128: packed")
                continue
            try:
                dest = export_run(run, exports / run.name)
            except Exception as e:  # noqa: BLE001  (a run without a checkpoint yet)
                print(f"{run.name}: not exported ({e})")
                continue
            split_weights(dest / TRANSFORMER, out, run.name)
            logs.add(dest / "transformer" / "config.json", f"{run.name}/transformer_config.json")
            if not shared:
                with tarfile.open(out / "shared.tar.gz", "w:gz") as tar:
                    tar.add(dest, ".", filter=lambda info: None if info.name == "./" + TRANSFORMER else info)
                shared = True
            print(f"{run.name}: packed")
        for log in runs.glob("*.log"):
            logs.add(log, f"logs/{log.name}")
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    print(sizes)
    if sum(sizes.values()) > 64 * 2**20 or len(sizes) > 8:  # the device tool's limits: the rest would be left out
        print(f"WARNING: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB: over what the device tool returns (8 files, 64 MiB)")


def split_weights(weights: Path, out: Path, name: str, part_bytes: int = PART_BYTES) -> None:
    """<name>.safetensors, or <name>.partN.safetensors of at most `part_bytes` each when larger
    (a wider transformer: the device tool returns files of at most 16 MiB)."""
    if weights.stat().st_size <= part_bytes:
        shutil.copy(weights, out / f"{name}.safetensors")
        return
    from safetensors.torch import load_file, save_file

    parts, size = [{}], 0
    for key, t in load_file(weights).items():
        n = t.numel() * t.element_size()
        if parts[-1] and size + n > part_bytes - 2**16:  # room for the header
            parts.append({})
            size = 0
        parts[-1][key], size = t, size + n
    for i, part in enumerate(parts):
        save_file(part, out / f"{name}.part{i}.safetensors", metadata={"format": "pt"})


def joined_weights(packed: Path) -> dict[str, list[Path]]:
    """Each run's weight files: one, or its parts in order (<run>.partN.safetensors)."""
    runs: dict[str, list[tuple[int, Path]]] = {}
    for f in packed.glob("*.safetensors"):
        m = re.fullmatch(r"(.+)\.part(\d+)\.safetensors", f.name)
        name, index = (m.group(1), int(m.group(2))) if m else (f.name.removesuffix(".safetensors"), -1)
        runs.setdefault(name, []).append((index, f))
    return {name: [f for _, f in sorted(files)] for name, files in sorted(runs.items())}


def unpack(packed: Path, models: Path) -> None:
    from safetensors.torch import load_file, save_file

    with tarfile.open(packed / "logs.tar.gz") as tar:
        tar.extractall(models / "_logs", filter="data")
    for name, files in joined_weights(packed).items():
        dest = models / name
        with tarfile.open(packed / "shared.tar.gz") as tar:
            tar.extractall(dest, filter="data")
        if len(files) == 1:
            shutil.copy(files[0], dest / TRANSFORMER)
        else:
            save_file({k: t for f in files for k, t in load_file(f).items()}, dest / TRANSFORMER, metadata={"format": "pt"})
        shutil.copy(models / "_logs" / name / "transformer_config.json", dest / "transformer" / "config.json")
        print(f"{dest}: a pipeline folder")


if __name__ == "__main__":
    if sys.argv[1] == "--unpack":
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        pack(Path(sys.argv[1]), Path(sys.argv[2]))
