"""The `magref` command: generate, batch, compose.

Bad input prints one line (problem and fix) on stderr and exits with status 2, no traceback.
Model code is imported only by the commands that need it, so `magref compose` starts fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import __version__
from .defaults import CACHES, MINIATURE_BUDGET, OFFICIAL_SETTINGS, PRESETS, SOLVER_CHOICES
from .errors import MagrefInputError

EXIT_USAGE = 2


def _add_generation_options(p: argparse.ArgumentParser, batch: bool = False) -> None:
    g = p.add_argument_group("generation" + (" (defaults for every item; items may override)" if batch else ""))
    g.add_argument("--model", default=None,
                   help="miniature (the bundled trained model, default), tiny-random, a MagrefPipeline folder, or a hub id")
    g.add_argument("--lora", action="append", default=None, help="a LoRA fused into the transformer: the final/ folder of a `magref train` "
                   "LoRA run, a .safetensors file, or a hub id (repeat for several)")
    g.add_argument("--lora-scale", action="append", type=float, default=None,
                   help="each LoRA's strength, one per --lora in order (default 1.0; 0 leaves the base model)")
    d = "the model's own (generation_defaults.json), else the official 480p value: "
    g.add_argument("--height", type=int, default=None, help=d + str(OFFICIAL_SETTINGS["height"]))
    g.add_argument("--width", type=int, default=None, help=d + str(OFFICIAL_SETTINGS["width"]))
    g.add_argument("--frames", type=int, default=None, help="4n+1 frames; " + d + str(OFFICIAL_SETTINGS["frames"]))
    g.add_argument("--steps", type=int, default=None, help=d + str(OFFICIAL_SETTINGS["steps"]))
    g.add_argument("--guidance", type=float, default=None, help=d + str(OFFICIAL_SETTINGS["guidance"]))
    g.add_argument("--shift", type=float, default=None, help="flow shift (3.0 at 480p, 5.0 at 720p); " + d + str(OFFICIAL_SETTINGS["shift"]))
    g.add_argument("--seed", type=int, default=None, help=d + str(OFFICIAL_SETTINGS["seed"]))
    g.add_argument("--solver", choices=SOLVER_CHOICES, default=None, help=d + OFFICIAL_SETTINGS["solver"])
    g.add_argument("--layout", default=None, help="layout JSON: one box [x0, y0, x1, y1] per reference")
    g.add_argument("--layout-seed", type=int, default=None, help="official random placement for random.seed(N)")
    g.add_argument("--negative-prompt", default=None, help="default: the model's own, else Wan's negative prompt plus 'camera shake'")
    g.add_argument("--fps", type=float, default=None, help=d + str(OFFICIAL_SETTINGS["fps"]))
    g.add_argument("--keep-first-frames", action="store_true", help="keep the first 4 decoded frames (the official output drops them)")
    w = p.add_argument_group("longer videos: sliding context windows (docs: README, Longer videos)")
    w.add_argument("--context-frames", type=int, default=None,
                   help="window length in frames (4n+1); default: the model's trained length when --frames exceeds it; 0: one pass over all frames")
    w.add_argument("--context-overlap", type=int, default=None, help="frames shared by neighbouring windows (a multiple of 4; default about a quarter window)")
    w.add_argument("--context-blend", choices=["linear", "pyramid"], default=None, help="how overlapping windows are blended (default linear)")
    a = p.add_argument_group("speed and memory (see docs/speed.md); under torchrun, context parallelism over the processes")
    a.add_argument("--preset", choices=list(PRESETS), default="quality",
                   help="quality: official two eager passes; fast: batched CFG + regional compile (GPU); lowmem: group offloading; "
                        "turbo: 4 flow-Euler steps, guidance 1 (one pass), shift 5, for step-distilled LoRAs (settings you give win)")
    a.add_argument("--cache", choices=CACHES, default="none",
                   help="step cache (changes the output slightly); magcache: the first video of a model and schedule calibrates it (no speed-up)")
    a.add_argument("--cache-threshold", type=float, default=None,
                   help="first-block cache / MagCache threshold (default 0.05 / 0.06, acceleration.CACHE_THRESHOLDS)")
    a.add_argument("--cache-interval", type=int, default=None, help="TaylorSeer: a full transformer pass every N steps, extrapolated between "
                   "(default acceleration.TAYLORSEER_INTERVAL)")
    a.add_argument("--attention", default=None, help="attention backend of diffusers' dispatcher (native, flash, sage, flex, ...), or flash4 "
                   "(FlashAttention 4 from the flash-attn-4 wheel, Hopper/Blackwell)")
    a.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a.add_argument("--fp8", nargs="?", const="weights", default=None, choices=["weights", "compute"],
                   help="float8 transformer through torchao (pip install 'magref[fp8]'): weights (default; half the memory) "
                        "or compute (fp8 matmuls, faster; GPU of compute capability 8.9+)")


SETTING_OPTIONS = ("negative_prompt", "height", "width", "frames", "steps", "guidance", "shift", "seed", "solver", "layout", "layout_seed", "fps",
                   "context_frames", "context_overlap", "context_blend")
ACCELERATION_OPTIONS = ("preset", "cache", "cache_threshold", "cache_interval", "attention", "device", "fp8")


def _options(args) -> dict:
    """The generate options as given (None: not given, the model's own default applies), with
    `--preset turbo`'s settings where none was given."""
    from .request import with_preset

    given = {**{k: getattr(args, k) for k in SETTING_OPTIONS}, "keep_first_frames": args.keep_first_frames or None}
    return with_preset(given, getattr(args, "preset", None))


def _model(args):
    from .request import ModelSpec

    return ModelSpec.resolve(args.model, args.lora, args.lora_scale)


def _acceleration(args, requests):
    """The acceleration options, checked together with the requests before any model loads."""
    from .acceleration import AccelerationOptions

    options = AccelerationOptions(**{k: getattr(args, k) for k in ACCELERATION_OPTIONS})
    options.check_requests(requests)
    return options


def _load(spec, options):
    from .jobs import LoadedModel

    return LoadedModel.load(spec, options)


def _warn(args, lines: list[str]) -> None:
    from .distributed import launch_rank

    if launch_rank() != 0:  # one copy under torchrun
        return
    for line in lines:
        print(f"magref {args.command}: warning: {line}", file=sys.stderr)


def cmd_generate(args) -> int:
    from .jobs import run_job
    from .request import GenerationRequest

    from .io import check_output_video

    out = check_output_video(args.out)
    spec = _model(args)
    request = GenerationRequest.prepare(spec.settings(_options(args), prompt=args.prompt, refs=args.ref), spec)  # all input errors, before the model loads
    _warn(args, request.warnings())
    model = _load(spec, _acceleration(args, [request]))
    sidecar = run_job(model, request, out)
    if not model.writes:
        return 0
    o = sidecar["output"]
    print(f"wrote {out} ({o['frames']} frames, {o['width']}x{o['height']}, {sidecar['timings_s']['generate']:.1f}s) and {out.with_suffix('.json')}")
    return 0


def cmd_batch(args) -> int:
    from .jobs import parse_batch

    spec = _model(args)
    return _run_items(args, spec, parse_batch(args.file, spec, _options(args)))


def _run_items(args, spec, items) -> int:
    """Every item prepared (validated, composed) before the model loads, so a bad item costs
    nothing; a finished batch rerun loads no model at all."""
    from .io import check_output_dir
    from .jobs import batch_lock, pending, prepare_items, run_batch

    check_output_dir(args.out_dir)
    prepare_items(items, spec)
    _warn(args, [f"{it.id}: {w}" for it in items for w in it.warnings()])
    from .distributed import launch_rank

    writes = launch_rank() == 0  # under torchrun rank 0 locks the folder and prints one summary
    with batch_lock(args.out_dir, writes):
        options = _acceleration(args, [it.request for it in items])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return _run_items_parallel(args, spec, items, options)
        todo = pending(items, args.out_dir, options.output_key())
        model = _load(spec, options) if todo else None
        run_batch(model, items, args.out_dir, writes=writes)
    return 0


def _run_items_parallel(args, spec, items, options) -> int:
    """A batch under torchrun. `--parallel items`: each process generates whole videos of its own
    (pending items dealt round-robin, so none is made twice), the throughput mode for many videos;
    `sequence`: every video split over all processes (Ulysses); `auto`: items when there are at
    least as many pending items as processes. Rank 0 holds the folder's lock and has removed a
    killed run's half-written files before anyone starts; a rerun resumes like one process's."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from .distributed import init_from_env
    from .jobs import pending, run_batch

    rank, world = init_from_env()
    dist.barrier()  # rank 0 holds the lock and has cleaned up
    todo = pending(items, args.out_dir, options.output_key())
    parallel = getattr(args, "parallel", "auto")  # `bench generate` has no --parallel: auto
    mode = parallel if parallel != "auto" else ("items" if len(todo) >= world else "sequence")
    if mode == "sequence":
        model = _load(spec, options) if todo else None
        run_batch(model, items, args.out_dir, writes=rank == 0)
        return 0
    mine = todo[rank::world]
    model = _load(spec, dataclasses.replace(options, context_parallel=False)) if mine else None
    counts = run_batch(model, mine, args.out_dir, writes=None)
    from .distributed import default_device

    generated = torch.tensor([counts["generated"]], device=default_device())  # NCCL reduces GPU tensors only
    dist.all_reduce(generated)
    if rank == 0:
        print(f"batch: {int(generated)} generated over {world} processes (items), {len(items) - len(todo)} already complete, "
              f"{len(items)} total in {args.out_dir}")
    return 0


def cmd_app(args) -> int:
    try:
        from .app import serve
        import gradio  # noqa: F401
    except ImportError:
        raise MagrefInputError("magref app needs gradio, which is not installed.", "pip install -e '.[app]'.") from None
    from .models import DEFAULT_MODEL

    if not 0 < args.port < 65536:
        raise MagrefInputError(f"--port {args.port} is not a port number.", "use e.g. --port 7860.")
    serve(args.host, args.port, args.auth, args.no_auth, args.out_dir, args.model or DEFAULT_MODEL, args.device, args.open)
    return 0


def cmd_compose(args) -> int:
    from .composition import RegionLayout, compose_references, mask_image
    from .io import load_reference, write_json, write_png

    from .models import generation_defaults, spatial_geometry

    # the model generate would use, so that layout.json is one `generate --layout` takes as it is
    stride, patch = spatial_geometry(args.model)
    size = generation_defaults(args.model)
    height = size["height"] if args.height is None else args.height
    width = size["width"] if args.width is None else args.width
    images = [load_reference(p) for p in args.refs]
    layout = RegionLayout.from_json(args.layout, height, width) if args.layout else None
    comp = compose_references(images, height, width, layout=layout, layout_seed=args.layout_seed, spatial_stride=stride, patch_size=patch)
    out = Path(args.out)
    write_png(out / "canvas.png", comp.canvas)
    write_png(out / "mask.png", mask_image(comp.pixel_mask))
    write_json(out / "layout.json", {**comp.layout.to_dict(stride), "refs": [str(p) for p in args.refs]})
    print(f"wrote {out / 'canvas.png'}, {out / 'mask.png'}, {out / 'layout.json'}")
    return 0


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cmd_convert(args) -> int:
    import torch

    from .checkpoints import convert

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    convert(args.src, args.dst, component=args.component, dtype=dtype, max_shard_size=args.max_shard_size, clip_heads=args.clip_heads)
    return 0


PREPARE_OPTIONS = ("frames", "fps", "height", "width", "max_clips_per_video", "samples_per_shard", "extractor", "detector", "segmenter",
                   "detector_threshold", "clip_codec")


def cmd_prepare(args) -> int:
    """One process, `--workers N` processes on this machine, or torchrun's processes (on many
    machines): each takes its share of the videos and writes its own shards; one manifest.json
    is merged at the end. A killed run resumes: finished videos are not redone."""
    from .data.prepare import PrepareSettings, merge_manifests, prepare

    settings = PrepareSettings(**{k: getattr(args, k) for k in PREPARE_OPTIONS})
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.workers < 1:
        raise MagrefInputError(f"--workers {args.workers} is not a number of processes.", "use --workers 1 or more.")
    if args.workers > 1 and world == 1:
        settings.validate()
        argv = [str(args.videos_dir), str(args.out_dir)]
        for k in PREPARE_OPTIONS:
            if getattr(args, k) is not None:
                argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        procs = [subprocess.Popen([sys.executable, "-m", "magref.cli", "prepare", *argv],
                                  env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(args.workers), "MAGREF_PREPARE_WORKER": "1"})
                 for r in range(args.workers)]
        failed = [r for r, p in enumerate(procs) if p.wait() != 0]
        if failed:
            raise MagrefInputError(f"prepare worker(s) {failed} failed (see above); finished videos are kept.", "fix the cause and rerun to resume.")
        merged = merge_manifests(Path(args.out_dir), settings)
        print(f"prepare: {merged['num_samples']} samples in {len(merged['shards'])} shard(s) from {args.workers} processes, "
              f"{len(merged['skipped'])} video(s) skipped -> {args.out_dir}")
        return 0
    torchrun = world > 1 and not os.environ.get("MAGREF_PREPARE_WORKER")
    if torchrun:  # the group meets now, while every rank is up; the final barrier may wait for hours of uneven shares
        import datetime

        import torch.distributed as dist

        from .distributed import init_from_env

        init_from_env(timeout=datetime.timedelta(days=7))
    prepare(args.videos_dir, args.out_dir, settings, rank=rank, world=world)
    if torchrun:  # rank 0 merges once every rank is done
        dist.barrier()
        if rank == 0:
            merged = merge_manifests(Path(args.out_dir), settings)
            print(f"prepare: {merged['num_samples']} samples in {len(merged['shards'])} shard(s) from {world} processes -> {args.out_dir}")
    return 0


def _config_overrides(args) -> dict:
    import yaml

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise MagrefInputError(f"--set {item!r} is not KEY=VALUE.", "write e.g. --set max_steps=200.")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return overrides


def cmd_train(args) -> int:
    from .training.trainer import run

    result = run(args.config, resume=args.resume, overrides=_config_overrides(args))
    print(f"trained to step {result['step']}, last loss {result['loss']:.5f}")
    return 0


def cmd_encode(args) -> int:
    from .distributed import launch_rank
    from .training.trainer import encode

    roots = encode(args.config, overrides=_config_overrides(args))
    if launch_rank() == 0:
        print("encoded: " + ", ".join(str(r) for r in roots))
    return 0


def cmd_bench_generate(args) -> int:
    from .bench.cases import load_cases
    from .jobs import BatchItem

    spec = _model(args)
    items = [BatchItem(c.id, spec.settings(_options(args), prompt=c.prompt, refs=[r.path for r in c.refs])) for c in load_cases(args.cases)]
    return _run_items(args, spec, items)


def cmd_bench_score(args) -> int:
    from .bench.cases import load_cases
    from .bench.report import write_report

    cases = load_cases(args.cases)
    folders = [Path(d) for d in args.videos_dirs]
    for d in folders:
        if not d.is_dir():
            raise MagrefInputError(f"Video folder {d} does not exist.", "pass folders holding <case id>.mp4 files.")
    weights, opens2v = {}, {}
    for item in args.weights or []:
        key, _, value = item.partition("=")
        weights[key] = value
    for item in args.opens2v or []:
        name, _, value = item.partition("=")
        if not Path(value).is_file():
            raise MagrefInputError(f"--opens2v {item!r}: no such file {value!r}.", "write FOLDER_NAME=values.json (per-case OpenS2V-Eval values).")
        opens2v[name] = Path(value)
    write_report(cases, folders, Path(args.out), weights, opens2v=opens2v, opens2v_domain=args.opens2v_domain)
    return 0


def cmd_world_build(args) -> int:
    from .world.build import build_world_dataset

    build_world_dataset(args.out, args.clips, args.split, seed=args.seed, frames=args.frames, subjects=args.subjects, caption_style=args.captions,
                        workers=args.workers)
    return 0


def _learnt_test_parser(world, name: str, help: str, shipped: str, steps: int, size: int, sees: str, what: str):
    """`world identifier` and `world tracker`: the same options, their own defaults."""
    p = world.add_parser(name, help=help)
    p.add_argument("--out", default=f"~/.cache/magref/{shipped}", help=f"the shipped one: src/magref/assets/world/{shipped}")
    p.add_argument("--vae", default=None, help="the VAE whose decoding it learns to see through (default: the shipped miniature's)")
    p.add_argument("--clips", type=int, default=600, help="clips rendered and decoded (and as many rendered only)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=size, help=f"frame size of the videos it will judge ({sees} at 64 px)")
    p.add_argument("--device", default=None, help=f"where the VAE and the {what} run (default: cuda when available, else cpu)")
    return p


def cmd_world_train(args) -> int:
    from .world.train import run

    run(args.out, vae_steps=args.vae_steps, clips=args.clips, dit_steps=args.dit_steps, batch_size=args.batch_size,
        ablation=args.ablation, reuse_from=args.reuse_from, decoder_steps=args.decoder_steps, vae_from=args.vae,
        subject_vae_steps=args.subject_vae_steps, vae_stride=args.vae_stride, device=args.device, stop_after_vae=args.vae_only, recipe=args.recipe,
        vae_init=args.vae_init, size=_world_size(args.size), checkpoint_every=args.checkpoint_every, stop_after_data=args.data_only,
        transformer_init=args.transformer_init, learning_rate=args.lr, lr_schedule=args.lr_schedule, dit_layers=args.dit_layers,
        dit_heads=args.dit_heads, encode_batch=args.encode_batch, source_order=args.source_order, data_seed=args.data_seed,
        repeats_by_references=args.repeats_by_references, train_shift=args.train_shift,
        **({"train_identities": args.train_identities} if args.train_identities is not None else {}))
    return 0


def _world_size(size: int) -> int:
    if size < 64 or size % 16:
        raise MagrefInputError(f"--size {size} is not a multiple of 16 of at least 64.", "use --size 64 or 128.")
    return size


def cmd_world_export(args) -> int:
    from .world.train import export_run, export_vae

    print(f"magref: wrote {export_vae(args.run, args.dest) if args.vae_only else export_run(args.run, args.dest, args.step, guidance=args.guidance)}")
    return 0


def cmd_world_identifier(args) -> int:
    from .distributed import default_device
    from .models import WORLD_VAE_PATH
    from .world.identify import train_identifier

    train_identifier(Path(args.out).expanduser(), args.vae or WORLD_VAE_PATH, clips=args.clips, steps=args.steps, seed=args.seed,
                     size=_world_size(args.size), device=args.device or default_device())
    return 0


def cmd_world_tracker(args) -> int:
    from .distributed import default_device
    from .models import WORLD_VAE_PATH
    from .world.track import train_tracker

    train_tracker(Path(args.out).expanduser(), args.vae or WORLD_VAE_PATH, clips=args.clips, steps=args.steps, seed=args.seed,
                  size=_world_size(args.size), device=args.device or default_device())
    return 0


def cmd_world_rescore(args) -> int:
    from .world.evaluate import rescore

    rescore(args.folder, tracker=args.tracker)
    return 0


def cmd_world_compare(args) -> int:
    from .world.evaluate import differences_markdown, paired_differences, results_of

    sides = [side.rpartition("#") if "#" in side else (side, "", "") for side in (args.a, args.b)]  # a folder may hold a '#'; a model name not
    rows = [results_of(folder, model or None) for folder, _, model in sides]
    names = [f"{rs[0]['model']} ({folder})" for rs, (folder, _, _) in zip(rows, sides)]
    print(differences_markdown(paired_differences(*rows), *names), end="")
    return 0


def cmd_world_evaluate(args) -> int:
    from .world.evaluate import evaluate

    models = {}
    for item in args.model:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise MagrefInputError(f"--model {item!r} is not NAME=SPEC.", "write e.g. --model magref=~/.cache/magref/world@1500.")
        models[name] = spec
    evaluate(models, args.out, subjects=tuple(args.subjects), cases=args.cases, seeds=tuple(args.seeds), steps=args.steps,
             guidance=args.guidance, truth=not args.no_truth, caption_style=args.captions, identifier=args.identifier, case_seed=args.case_seed,
             size=args.size, device=args.device, shift=args.shift, tracker=args.tracker)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magref", description="MAGREF any-reference video generation")
    parser.add_argument("--version", action="version", version=f"magref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="one video from a prompt and 1-16 reference images (1-8 on the official grids)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--ref", action="append", required=True, help="reference image (repeat for several)")
    p.add_argument("--out", required=True, help="output .mp4 (a .json sidecar is written beside it)")
    _add_generation_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("batch", help="resumable batch from a name@@prompt@@img... or JSONL file")
    p.add_argument("file")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--parallel", choices=["auto", "items", "sequence"], default="auto",
                   help="under torchrun: items = each process makes videos of its own (throughput); sequence = each video split over "
                        "all processes (Ulysses); auto = items when there are at least as many pending items as processes")
    _add_generation_options(p, batch=True)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("app", help="a local web page for making videos (pip install -e '.[app]')")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="a password for the page (needed with another --host)")
    p.add_argument("--no-auth", action="store_true", help="serve another --host without a password (only on a network of your own)")
    p.add_argument("--out-dir", default="outputs/app", help="where videos and their sidecars go (default outputs/app)")
    p.add_argument("--model", default=None, help="the model the page starts with (default: the bundled miniature)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("compose", help="write the composed canvas, mask and layout")
    p.add_argument("refs", nargs="+")
    p.add_argument("--height", type=int, default=None, help="default: the model's own (as generate)")
    p.add_argument("--width", type=int, default=None, help="default: the model's own (as generate)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layout", default=None)
    g.add_argument("--layout-seed", type=int, default=None)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="compose for this model: its size and latent cells (VAE stride); default: generate's default model")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("convert", help="official checkpoint -> diffusers/transformers folder(s)")
    p.add_argument("src", help="official MAGREF folder, or (with --component) a component folder or single file")
    p.add_argument("dst", help="output folder")
    p.add_argument("--component", choices=["transformer", "vae", "text_encoder", "image_encoder"], default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: keep the checkpoint's)")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--clip-heads", type=int, default=None, help="CLIP attention heads when the width is not a standard ViT")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("prepare", help="videos -> training dataset (clips, captions, subject cut-outs)")
    p.add_argument("videos_dir")
    p.add_argument("out_dir")
    p.add_argument("--frames", type=int, default=17, help="clip length, 4n+1")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--max-clips-per-video", type=int, default=4)
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--extractor", default="opencv", help="opencv (offline), masks (ground-truth .masks.npz sidecars) or detect-segment")
    p.add_argument("--detector", default=None, help="detect-segment: OWLv2/OWL-ViT/Grounding-DINO weights (folder or hub id)")
    p.add_argument("--segmenter", default=None, help="detect-segment: SAM weights (folder or hub id)")
    p.add_argument("--detector-threshold", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=1, help="processes on this machine, each preparing its share of the videos "
                                                          "(under torchrun: one per rank, over many machines)")
    p.add_argument("--clip-codec", default="h264", help="how shards store clips: h264 (4:4:4, CRF 14; default), ffv1 (lossless), raw (uint8 frames)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train (full or LoRA) with region-aware dynamic masking; torchrun for several processes")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a top-level config value")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("encode", help="write a training config's encoding cache (VAE latents, CLIP features, caption embeddings) ahead of "
                       "training; torchrun splits it over processes")
    p.add_argument("config", help="YAML config with cache_layouts: K (see docs/training.md)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a top-level config value")
    p.set_defaults(func=cmd_encode)

    bench = sub.add_parser("bench", help="the multi-subject benchmark").add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("generate", help="generate <id>.mp4 for every case (resumable, as magref batch)")
    p.add_argument("cases")
    p.add_argument("--out-dir", required=True)
    _add_generation_options(p, batch=True)
    p.set_defaults(func=cmd_bench_generate)
    p = bench.add_parser("score", help="score one or more folders of videos; side-by-side report")
    p.add_argument("cases")
    p.add_argument("videos_dirs", nargs="+")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--weights", action="append", metavar="KEY=PATH", help="weights for metrics that need them (face, clip, dino)")
    p.add_argument("--opens2v", action="append", metavar="FOLDER_NAME=FILE",
                   help="per-case OpenS2V-Eval values for a folder ({case: {aesthetics, motion_smoothness, motion_amplitude, facesim, gme, nexus, natural}})")
    p.add_argument("--opens2v-domain", choices=["open", "human"], default="open")
    p.set_defaults(func=cmd_bench_score)

    world = sub.add_parser("world", help="the procedural world and the miniature MAGREF").add_subparsers(dest="world_command", required=True)
    p = world.add_parser("build", help="write world clips as a training/evaluation dataset")
    p.add_argument("out")
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--split", choices=["train", "heldout"], default="train")
    p.add_argument("--subjects", type=int, default=1)
    p.add_argument("--frames", type=int, default=13)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes that render clips (the same dataset for any count)")
    p.add_argument("--captions", choices=["kind", "appearance"], default="kind",
                   help="kind: 'a person', 'a mug' (the references say which; the miniature's training captions); appearance: colours too")
    p.set_defaults(func=cmd_world_build)
    p = world.add_parser("train", help="train the miniature MAGREF from scratch (resumable; hours on a CPU)")
    p.add_argument("--out", default="~/.cache/magref/world")
    # defaults: magref.defaults.MINIATURE_BUDGET (docs/miniature-world.md)
    p.add_argument("--vae-steps", type=int, default=MINIATURE_BUDGET["vae_steps"])
    p.add_argument("--decoder-steps", type=int, default=MINIATURE_BUDGET["decoder_steps"], help="decoder-only tuning on whole clips (0: skip)")
    p.add_argument("--subject-vae-steps", type=int, default=MINIATURE_BUDGET["subject_vae_steps"],
                   help="then the whole VAE on whole clips, the loss weighted where subjects are (0: skip)")
    p.add_argument("--clips", type=int, default=MINIATURE_BUDGET["clips"])
    p.add_argument("--dit-steps", type=int, default=MINIATURE_BUDGET["dit_steps"])
    p.add_argument("--batch-size", type=int, default=MINIATURE_BUDGET["batch_size"])
    p.add_argument("--ablation", choices=["none", "no-mask", "tokens"], default="none",
                   help="no-mask: mask channels carry zeros; tokens: references as extra tokens (Phantom-style)")
    p.add_argument("--reuse-from", default=None, help="another run's folder: reuse its VAE and data (same budget, only the transformer differs)")
    p.add_argument("--vae", default=None, help="a finished VAE folder (e.g. src/magref/assets/models/miniature/vae): skips the VAE stages")
    p.add_argument("--vae-stride", type=int, choices=[4, 8], default=8,
                   help="the VAE's spatial stride: 8 (the shipped miniature) or 4 (16x16 latents at 64x64, room for several subjects)")
    p.add_argument("--vae-only", action="store_true", help="stop once the VAE stages are done")
    p.add_argument("--data-only", action="store_true", help="stop once the clips and OUT/dit.yaml are written: build the encoding cache "
                   "with many processes (torchrun --nproc_per_node N -m magref.cli encode OUT/dit.yaml), then run again to train")
    p.add_argument("--vae-init", default=None, help="a VAE folder whose weights start VAE stage 1 (trained on, not used as finished as --vae is), "
                   "e.g. src/magref/assets/world/vae4x")
    p.add_argument("--recipe", choices=["single", "multi"], default="single",
                   help="training clips: single subject (the paper's setting) or 1-3 subjects each (beyond the paper)")
    p.add_argument("--device", default=None, help="where VAE stage 1 runs, the 4x recipe's only stage (default: cuda when available, else cpu); "
                   "the transformer stage picks cuda by itself")
    p.add_argument("--size", type=int, default=64, help="clip height and width: 64 (the shipped miniature) or 128 (8x8 tokens per latent frame "
                   "with the 8x VAE; pair it with --vae src/magref/assets/models/miniature/vae)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="transformer steps between checkpoints (each kept, ~140 MB)")
    p.add_argument("--transformer-init", default=None, help="weights that start the transformer (a model folder or a .safetensors, e.g. a "
                   "lent GPU's packed run), with a fresh optimizer; a resume reuses the run's own. Weights of a shallower transformer of the same "
                   "width start a deeper one (--dit-layers): copies of its blocks, the extra ones passing their input through")
    p.add_argument("--lr", type=float, default=1e-3, help="the transformer's learning rate")
    p.add_argument("--lr-schedule", choices=["constant_with_warmup", "cosine", "linear"], default="constant_with_warmup",
                   help="cosine / linear: anneal to 0 by --dit-steps (e.g. finishing a --transformer-init run)")
    p.add_argument("--dit-layers", type=int, default=6, help="the transformer's blocks (the shipped miniature's 6)")
    p.add_argument("--dit-heads", type=int, default=4, help="its attention heads of 64 channels: width = 64 x heads (the shipped 4: 256)")
    p.add_argument("--encode-batch", type=int, default=None, help="examples (clip x layout) per encoder call while the encoding cache is "
                   "built: 1 (a new run's default) equals the live path bit for bit; 16 builds it many times faster on a GPU (launch-bound "
                   "small encodes); a resume keeps the run's")
    p.add_argument("--source-order", type=float, default=0.0, help="the share of grid and random layouts whose regions keep the subjects' "
                   "left-to-right order in the clip (0: shuffled, the method's draw; with 2-3 subjects a small model averages their looks "
                   "when the canvas does not say which goes where)")
    p.add_argument("--data-seed", type=int, default=0, help="which training clips are drawn: another seed gives new clips of the same "
                   "training identities (e.g. to go on from --transformer-init on clips it has not seen) without re-encoding old ones")
    p.add_argument("--train-identities", type=int, default=None, help="how many training identities the clips draw from (default 320: the "
                   "first 400 ids' split; up to 819, every unique look that is not held out): more looks, fewer attribute pairings learnt by heart")
    p.add_argument("--repeats-by-references", type=int, nargs="+", default=None, metavar="R",
                   help="how often an epoch shows a clip with 1, 2, 3 references, e.g. 3 1 1: single-subject clips three times as often "
                   "(a 0 leaves such clips out; default: on a resume the run's own, else every clip once)")
    p.add_argument("--train-shift", type=float, default=None, metavar="S",
                   help="the shift of the noise levels the transformer trains at (default 3, the sampler's; 1 draws them uniformly, so more "
                   "of the draws are at low noise; default on a resume: the run's own)")
    p.set_defaults(func=cmd_world_train)
    p = world.add_parser("export", help="save a `world train` run as a self-contained model folder (bf16, with its generation defaults)")
    p.add_argument("run", help="a `magref world train --out` folder")
    p.add_argument("dest", help="e.g. src/magref/assets/models/miniature")
    p.add_argument("--step", type=int, default=None, help="transformer checkpoint step (default: the latest)")
    p.add_argument("--vae-only", action="store_true", help="the run's finished VAE alone (for `world train --vae`)")
    p.add_argument("--guidance", type=float, default=None, help="the model's default guidance scale (default: the official 5); pick it on "
                   "one `world evaluate --case-seed` and confirm it on another")
    p.set_defaults(func=cmd_world_export)
    _learnt_test_parser(world, "identifier", "train the learnt identity test of `world evaluate` (held-out identities through the VAE)",
                        "identifier", 2000, 64, "the classifier sees them", "classifier").set_defaults(func=cmd_world_identifier)
    _learnt_test_parser(world, "tracker", "train the learnt motion test of `world evaluate` (held-out subjects' masks through the VAE)",
                        "tracker128", 3000, 128, "it sees them", "tracker").set_defaults(func=cmd_world_tracker)
    p = world.add_parser("rescore", help="add the learnt motion test to a `world evaluate` folder's results from its videos")
    p.add_argument("folder", help="a `world evaluate --out` folder (with its videos/)")
    p.add_argument("--tracker", default=None, help="the learnt motion test's folder (default: the shipped one for the videos' size)")
    p.set_defaults(func=cmd_world_rescore)
    p = world.add_parser("compare", help="paired differences of two `world evaluate` results (same cases and seeds), by subject count")
    p.add_argument("a", help="a `world evaluate --out` folder, or FOLDER#MODEL when it holds several models")
    p.add_argument("b", help="the other side (the same --case-seed); the table reports a minus b")
    p.set_defaults(func=cmd_world_compare)
    p = world.add_parser("evaluate", help="score models against the truth on held-out identities (1-3 subjects, several seeds)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                   help="SPEC: a pipeline folder, a `world train --out` run (latest checkpoint) or RUN@STEP; repeat per model")
    p.add_argument("--out", required=True, help="folder for results.jsonl, summary.json, table.md, sheets/ and videos/ (a rerun resumes)")
    p.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--cases", type=int, default=10, help="cases per subject count")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--shift", type=float, default=None, help="the sampler's flow shift (default: each model's scheduler's)")
    p.add_argument("--no-truth", action="store_true", help="leave out the ground-truth (ceiling) row")
    p.add_argument("--case-seed", type=int, default=2,
                   help="which cases (identities, motions, scenes) are drawn; 2 made the docs' tables, another gives fresh cases (recorded in the results)")
    p.add_argument("--identifier", default=None, help="the learnt identity test's folder (default: the shipped one for the videos' size, "
                   "assets/world/identifier or identifier128)")
    p.add_argument("--tracker", default=None, help="the learnt motion test's folder (default: the shipped one for the videos' size, "
                   "assets/world/tracker128; none ships for 64 px)")
    p.add_argument("--captions", choices=["kind", "appearance"], default="kind",
                   help="kind: 'a person', 'a mug' (the references say which; the miniature's training captions); appearance: colours too")
    p.add_argument("--size", type=int, default=None, help="video height and width (default: what the models were trained at)")
    p.add_argument("--device", default=None, help="where the models run (default: cuda when available, else cpu)")
    p.set_defaults(func=cmd_world_evaluate)
    return parser


def _not_torchvision_advice(record) -> bool:
    return "requires torchvision" not in record.getMessage()


def _not_hub_unreachable(record) -> bool:
    return not record.getMessage().startswith("Couldn't connect to the Hub")


def _quiet_known_noise() -> None:
    """Import-time chatter of optional libraries that says nothing about the user's command:
    transformers >= 5 on CLIPImageProcessor's PIL fallback (the backend we use); torchao, when
    installed (fp8), on its CUDA-only kernels, and torch/diffusers on torchao's types. Real
    problems still surface: these loggers keep ERROR. And diffusers' "Couldn't connect to the Hub"
    before it tries the local cache: a model that is not there either is refused in our one line,
    which names the id and the network (`models.load_pipeline`)."""
    import logging

    logging.getLogger("transformers.utils.import_utils").addFilter(_not_torchvision_advice)  # one function: added once per process
    logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_not_hub_unreachable)
    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_known_noise()
    try:
        return args.func(args)
    except MagrefInputError as e:
        print(f"magref {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        done = "the video was not finished" if args.command == "generate" else "finished outputs are kept, rerun to resume"
        print(f"magref {args.command}: interrupted; {done}.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.barrier()  # rank 0 may still be writing; gloo aborts if a peer leaves early
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
