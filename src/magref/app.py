"""`magref app`: a local web page for making videos from references (gradio).

A thin face on the one request path, like the CLI: the page's form becomes a `GenerationSettings`,
`GenerationRequest.prepare` validates it and composes the references once (the preview shows that
composition), and `jobs.run_job` writes the same mp4 + sidecar as `magref generate`, atomically,
into the output folder. `Studio` holds everything the page does, without gradio, so it is tested
on its own; `build_ui` lays it out; `serve` applies the server's limits:

- one generation at a time, a queue of at most `QUEUE_SIZE`, uploads of at most `MAX_UPLOAD`
  (enforced by the server; each image also passes `io.load_reference`'s pixel limit);
- 127.0.0.1 unless told otherwise; another host needs `--auth USER:PASS` or an explicit
  `--no-auth`; never a public share link.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import MagrefInputError

DEFAULT_OUT_DIR = "outputs/app"
QUEUE_SIZE = 8
MAX_UPLOAD = "25mb"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LAYOUT_MODES = ("official grid", "official random placement", "my boxes")

# Which field of the page an error message concerns: the first field whose words it contains.
# The messages are the CLI's (`MagrefInputError`); the page shows each beside its field.
ERROR_FIELDS = (
    ("refs", ("reference", "image", "references", "--ref")),
    ("layout", ("layout", "box", "boxes", "placement")),
    ("prompt", ("prompt",)),
    ("model", ("model", "lora", "checkpoint", "--device", "preset", "--cache")),
    ("settings", ("",)),
)
# the order words are looked for in (a layout error often names its references; a count of references is the references')
_MATCH_ORDER = ("prompt", "model", "layout", "refs", "settings")


def error_field(error: str | MagrefInputError) -> str:
    """The field an error concerns, from its problem sentence (not its fix)."""
    text = (error.problem if isinstance(error, MagrefInputError) else str(error).split(" Fix: ")[0]).lower()
    if "references were given" in text or "no reference image" in text:
        return "refs"
    words = dict(ERROR_FIELDS)
    return next(name for name in _MATCH_ORDER if any(w in text for w in words[name]))


@dataclass
class Form:
    """What the page's form holds, in `GenerationSettings`' names (None: the model's default)."""

    prompt: str = ""
    refs: list[str] = field(default_factory=list)
    negative_prompt: str | None = None
    model: str = "miniature"
    loras: str = ""  # one "path-or-hub-id [scale]" per line
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    solver: str | None = None
    seed: int | None = None  # None: a random seed, recorded in the sidecar
    layout_mode: str = LAYOUT_MODES[0]
    layout_seed: int | None = None
    boxes: list[list[float]] | None = None  # my boxes: [x0, y0, x1, y1] in pixels per reference
    preset: str = "quality"
    cache: str = "none"
    fps: float | None = None

    def lora_args(self) -> tuple[list[str], list[float]]:
        paths, scales = [], []
        for line in self.loras.splitlines():
            line = line.strip()
            if not line:
                continue
            head, _, last = line.rpartition(" ")
            try:  # "path with spaces 0.8": the last word is the scale when it is a number
                scale, path = float(last), head.strip()
            except ValueError:
                scale, path = 1.0, line
            if not path:
                raise MagrefInputError(f"LoRA line {line!r} names no LoRA.", "write one LoRA per line as PATH_OR_HUB_ID [SCALE].")
            paths.append(path)
            scales.append(scale)
        return paths, scales


class Studio:
    """The page's work: preview, generate (progress, cancel), history, restore. One model stays
    loaded (reloaded only when the page asks for another model or options); one job at a time."""

    def __init__(self, out_dir: str | Path = DEFAULT_OUT_DIR, device: str | None = None):
        from .io import check_output_dir

        self.out_dir = check_output_dir(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._loaded: tuple[Any, Any] | None = None  # (key, jobs.LoadedModel)
        self._job_lock = threading.Lock()
        self._cancel = threading.Event()
        self._owner_lock = threading.Lock()
        self._running: str | None = None  # the session whose job runs
        self._pending_cancel: set[str] = set()  # sessions that cancelled a job still queued
        self.warnings: list[str] = []

    # -- one request path ---------------------------------------------------------------------
    def spec(self, form: Form):
        from .request import ModelSpec

        return ModelSpec.resolve(form.model.strip() or None, *form.lora_args())

    def request(self, form: Form):
        """Form -> validated, composed `GenerationRequest` (the CLI's errors, raised here)."""
        from .request import GenerationRequest, with_preset

        spec = self.spec(form)
        if not form.refs:
            raise MagrefInputError("No reference image was given.", "add 1 to 8 images under References.")
        layout, layout_seed = None, None
        if form.layout_mode == "official random placement":
            if form.layout_seed is None:
                raise MagrefInputError("Official random placement needs a layout seed.", "press Shuffle or type a seed.")
            layout_seed = int(form.layout_seed)
        elif form.layout_mode == "my boxes":
            filled = [b for b in (form.boxes or []) if b is not None and None not in b]
            if len(filled) != len(form.refs) or len(form.boxes or []) != len(form.refs):
                raise MagrefInputError(f"My boxes: {len(filled)} of {len(form.refs)} rows have a box.",  # worded for the layout field
                                       "fill x0, y0, x1, y1 in every row of the table.")
            layout = {"boxes": [[float(v) for v in b] for b in form.boxes]}
        elif form.layout_mode not in LAYOUT_MODES:
            raise MagrefInputError(f"Unknown layout {form.layout_mode!r}.", f"choose one of {', '.join(LAYOUT_MODES)}.")
        options = with_preset({k: getattr(form, k) for k in ("height", "width", "frames", "steps", "guidance", "shift", "solver", "fps", "negative_prompt")},
                              form.preset)
        seed = form.seed if form.seed is not None else random.randrange(2**31)
        settings = spec.settings(options, prompt=form.prompt, refs=list(form.refs), seed=seed, layout=layout, layout_seed=layout_seed)
        return GenerationRequest.prepare(settings, spec)

    def preview(self, form: Form):
        """The composed canvas and region mask the video will be conditioned on."""
        from .composition import mask_image

        comp = self.request(form).composition
        return comp.canvas, mask_image(comp.pixel_mask), comp.layout.to_dict(comp.spatial_stride)

    def acceleration(self, form: Form, request):
        from .acceleration import AccelerationOptions

        options = AccelerationOptions(preset=form.preset, cache=form.cache, device=self.device)
        options.check_requests([request])
        return options

    def model(self, spec, options):
        from .jobs import LoadedModel

        key = (spec, json.dumps(asdict(options), sort_keys=True))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the old model before the new one loads (hooks can hold cycles)
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._loaded = (key, LoadedModel.load(spec, options))
        return self._loaded[1]

    def next_output(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for k in range(1000):
            path = self.out_dir / f"{stamp}{'-' + str(k) if k else ''}.mp4"
            if not path.exists() and not path.with_suffix(".json").exists():
                return path
        raise MagrefInputError(f"{self.out_dir} has no free name for a video this second.", "try again in a second.")

    def generate(self, form: Form, progress=None, owner: str | None = None) -> tuple[Path, dict]:
        """One video: validated and composed first, then the job; `progress(done, total, s_left)`
        after every step. `cancel(owner)` stops it at the next step end, and nothing is written;
        `owner` (the page's session) makes a cancel stop that session's job only."""
        from .jobs import JobCancelled, run_job

        request = self.request(form)  # refused input costs nothing, not even a copy of its uploads
        request.settings.refs = self.keep_references(form.refs)  # the same bytes (the request holds their hashes), kept for history
        self.warnings = request.warnings()  # allowed, but the page says so (e.g. an extended grid past 8)
        options = self.acceleration(form, request)
        with self._job_lock:  # one generation at a time, whichever face asked
            with self._owner_lock:
                self._running, cancelled_early = owner, owner is not None and owner in self._pending_cancel
                self._pending_cancel.discard(owner)
                self._cancel.clear()
            if cancelled_early:
                raise JobCancelled("cancelled before it started")
            model = self.model(request.model, options)
            out = self.next_output()
            started = time.perf_counter()

            def on_step(done, total):
                if self._cancel.is_set():
                    raise JobCancelled(f"cancelled after step {done} of {total}")
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    progress(done, total, elapsed / done * (total - done))

            sidecar = run_job(model, request, out, on_step=on_step)
        return out, sidecar

    def keep_references(self, paths: list[str]) -> list[str]:
        """Uploads live in gradio's temporary folder: a copy under the output folder (named by
        content) keeps every sidecar's references, so history can restore a run later."""
        import shutil

        from .io import sha256_file

        kept = []
        for p in map(Path, paths):
            if not p.is_file() or p.resolve().is_relative_to(self.out_dir.resolve()):
                kept.append(str(p))  # missing: the request names it; ours already: as it is
                continue
            dst = self.out_dir / "references" / f"{sha256_file(p)[:16]}{p.suffix.lower()}"
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst.with_suffix(dst.suffix + ".part"))
                dst.with_suffix(dst.suffix + ".part").replace(dst)
            kept.append(str(dst))
        return kept

    def cancel(self, owner: str | None = None) -> None:
        """Stop the running job if it is `owner`'s (any job when owner is None); a job of
        `owner` still waiting in the queue is stopped as it starts."""
        with self._owner_lock:
            if owner is None or owner == self._running:
                self._cancel.set()
            else:
                self._pending_cancel.add(owner)

    def wait_until_stopped(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no job runs; True when none does."""
        if not self._job_lock.acquire(timeout=timeout):
            return False
        self._job_lock.release()
        return True

    # -- history --------------------------------------------------------------------------------
    def history(self) -> list[dict]:
        """Finished videos in the output folder, newest first: their sidecars (with `path`)."""
        rows = []
        for sidecar in self.out_dir.glob("*.json"):
            try:
                data = json.loads(sidecar.read_text())
                video = sidecar.with_suffix(".mp4")
                # the sidecar and the file's size (hashing every video on each page load would not scale)
                if data.get("status") == "complete" and video.is_file() and video.stat().st_size == data["output"]["bytes"]:
                    rows.append({**data, "path": str(video)})
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                continue
        return sorted(rows, key=lambda d: (d.get("created_unix", 0), d["path"]), reverse=True)

    def restore(self, video: str | Path) -> Form:
        """The form that made a past video (its sidecar's settings, model and options)."""
        sidecar = json.loads(Path(video).with_suffix(".json").read_text())
        s = sidecar["settings"]
        layout = s.get("layout")
        mode = "my boxes" if layout else ("official random placement" if s.get("layout_seed") is not None else LAYOUT_MODES[0])
        boxes = [list(b) for b in sidecar["layout"]["boxes"]] if layout else None  # the boxes as composed, per reference
        loras = "\n".join(f"{lo.get('hub_id') or lo['file']} {lo['scale']}" for lo in sidecar["model"].get("loras", []))
        acc = sidecar.get("acceleration", {})
        return Form(prompt=s["prompt"], refs=list(s["refs"]), negative_prompt=s.get("negative_prompt"), model=sidecar["model"]["id"], loras=loras,
                    height=s["height"], width=s["width"], frames=s["frames"], steps=s["steps"], guidance=s["guidance"], shift=s["shift"],
                    solver=s["solver"], seed=s["seed"], layout_mode=mode, layout_seed=s.get("layout_seed"), boxes=boxes,
                    preset=acc.get("preset", "quality"), cache=acc.get("cache") if isinstance(acc.get("cache"), str) else "none", fps=s["fps"])


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
def _file_paths(files) -> list[str]:
    """Paths of what gr.File holds (strings with type="filepath"; file objects or dicts otherwise)."""
    out = []
    for f in files or []:
        if isinstance(f, dict):
            out.append(f.get("path") or f.get("name"))
        else:
            out.append(f if isinstance(f, str) else getattr(f, "path", None) or getattr(f, "name"))
    return out


def _ordered(paths: list[str], table) -> tuple[list[str], list[list[float]] | None]:
    """References in the table's order (its "order" column) and their boxes, if all are given."""
    rows = _table_rows(table)
    if len(rows) != len(paths):
        return paths, None
    order = sorted(range(len(paths)), key=lambda i: (_num(rows[i][0], i + 1), i))
    boxes = [[_num(v, None) for v in rows[i][2:6]] for i in order]
    return [paths[i] for i in order], (boxes if any(None not in b for b in boxes) else None)  # partial: the request counts them


def _table_rows(table) -> list[list]:
    if table is None:
        return []
    if hasattr(table, "values"):  # a pandas DataFrame
        return [list(r) for r in table.values.tolist()]
    if isinstance(table, dict):
        return [list(r) for r in table.get("data", [])]
    return [list(r) for r in table]


def _num(value, default):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if v == v else default  # NaN: an empty cell


TABLE_HEADERS = ["order", "file", "x0", "y0", "x1", "y1"]
# small videos and canvases enlarged without blur, so a 64 px frame can be judged
CSS = ".error{color:#b00020;font-weight:600} #canvas img, #mask img, #video video{image-rendering:pixelated;object-fit:contain}"


def build_ui(studio: Studio, model: str = "miniature"):
    import gradio as gr

    from .defaults import CACHES, PRESETS, SOLVER_CHOICES
    from .request import ModelSpec

    d = ModelSpec.resolve(model).defaults()
    num = dict(precision=0)

    def form_from(refs, table, prompt, negative, model_id, loras, height, width, frames, steps, guidance, shift, solver, seed, random_seed,
                  layout_mode, layout_seed, preset, cache, fps) -> Form:
        paths, boxes = _ordered(_file_paths(refs), table)
        return Form(prompt=prompt or "", refs=paths, negative_prompt=negative or None, model=model_id or "miniature", loras=loras or "",
                    height=_int(height), width=_int(width), frames=_int(frames), steps=_int(steps), guidance=_num(guidance, None),
                    shift=_num(shift, None), solver=solver, seed=None if random_seed else _int(seed), layout_mode=layout_mode,
                    layout_seed=_int(layout_seed), boxes=boxes, preset=preset, cache=cache, fps=_num(fps, None))

    def errors(message: str | None = None) -> list:
        where = error_field(message) if message else None  # message: str(MagrefInputError)
        return [gr.update(value=f"⚠ {message}" if where == name else "", visible=where == name) for name, _ in ERROR_FIELDS]

    with gr.Blocks(title="magref") as page:
        gr.Markdown("# magref\nReference images and a prompt in, a video out, each subject keeping its identity.")
        with gr.Row():
            with gr.Column(scale=1):
                refs = gr.File(label="References (1-8 images)", file_count="multiple", file_types=["image"], type="filepath", elem_id="refs")
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "str", "number", "number", "number", "number"], label=
                                     "Order (edit to reorder) and, for 'my boxes', each reference's box in pixels", interactive=True,
                                     elem_id="ref-table", column_count=(6, "fixed"))
                err_refs = gr.Markdown(visible=False, elem_id="error-refs", elem_classes=["error"])
                layout_mode = gr.Radio(list(LAYOUT_MODES), value=LAYOUT_MODES[0], label="Layout", elem_id="layout-mode")
                with gr.Row():
                    layout_seed = gr.Number(label="Layout seed", value=None, elem_id="layout-seed", **num)
                    shuffle = gr.Button("Shuffle", elem_id="shuffle")
                err_layout = gr.Markdown(visible=False, elem_id="error-layout", elem_classes=["error"])
                with gr.Row():
                    canvas = gr.Image(label="Canvas (what the model is conditioned on)", type="pil", interactive=False, height=220, elem_id="canvas")
                    mask = gr.Image(label="Region mask", type="pil", interactive=False, height=220, elem_id="mask")
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                err_prompt = gr.Markdown(visible=False, elem_id="error-prompt", elem_classes=["error"])
                negative = gr.Textbox(label="Negative prompt (empty: the model's default)", lines=1, elem_id="negative")
                with gr.Accordion("Model", open=False):
                    model_id = gr.Textbox(label="Model (miniature, a local folder, or a hub id)", value=model, elem_id="model")
                    loras = gr.Textbox(label="LoRAs: one 'path-or-hub-id scale' per line", lines=2, elem_id="loras")
                    with gr.Row():
                        preset = gr.Dropdown(list(PRESETS), value="quality", label="Preset", elem_id="preset")
                        cache = gr.Dropdown(["none", *CACHES], value="none", label="Step cache", elem_id="cache")
                err_model = gr.Markdown(visible=False, elem_id="error-model", elem_classes=["error"])
                with gr.Row():
                    height = gr.Number(label="Height", value=d["height"], elem_id="height", **num)
                    width = gr.Number(label="Width", value=d["width"], elem_id="width", **num)
                    frames = gr.Number(label="Frames (4n+1)", value=d["frames"], elem_id="frames", **num)
                    fps = gr.Number(label="fps", value=d["fps"], elem_id="fps")
                with gr.Row():
                    steps = gr.Number(label="Steps", value=d["steps"], elem_id="steps", **num)
                    guidance = gr.Number(label="Guidance", value=d["guidance"], elem_id="guidance")
                    shift = gr.Number(label="Shift", value=d["shift"], elem_id="shift")
                    solver = gr.Dropdown(list(SOLVER_CHOICES), value=d["solver"], label="Solver", elem_id="solver")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=d["seed"], elem_id="seed", **num)
                    random_seed = gr.Checkbox(label="Random seed (recorded)", value=False, elem_id="random-seed")
                err_settings = gr.Markdown(visible=False, elem_id="error-settings", elem_classes=["error"])
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", elem_id="cancel")
                status = gr.Markdown(elem_id="status")
                video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True, height=360, elem_id="video")
                files = gr.File(label="Download (mp4 and sidecar JSON)", file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Accordion("History", open=True):
            history = gr.Dataframe(headers=["created", "prompt", "seed", "video"], interactive=False, elem_id="history")
            with gr.Row():
                pick = gr.Dropdown(choices=[], label="A past video", elem_id="history-pick")
                restore = gr.Button("Restore its settings", elem_id="restore")

        form_inputs = [refs, table, prompt, negative, model_id, loras, height, width, frames, steps, guidance, shift, solver, seed, random_seed,
                       layout_mode, layout_seed, preset, cache, fps]
        error_boxes = [err_refs, err_layout, err_prompt, err_model, err_settings]

        def on_refs(files, table_now):
            paths = _file_paths(files)
            old = {r[1]: r for r in _table_rows(table_now)}
            rows = [[k + 1, Path(p).name, *(old.get(Path(p).name, [None] * 6)[2:6])] for k, p in enumerate(paths)]
            return rows

        def on_preview(*values):
            form = form_from(*values)
            if not form.refs:
                return None, None, *errors()
            try:
                if not form.prompt.strip():
                    form.prompt = "preview"  # the preview needs no prompt
                c, m, _ = studio.preview(form)
            except MagrefInputError as e:
                return None, None, *errors(str(e))
            return c, m, *errors()

        def on_shuffle():
            return gr.update(value=random.randrange(2**31)), gr.update(value="official random placement")

        def history_view():
            rows = studio.history()
            table_rows = [[r.get("created", ""), r["settings"]["prompt"], r["settings"]["seed"], Path(r["path"]).name] for r in rows]
            return table_rows, gr.update(choices=[Path(r["path"]).name for r in rows], value=None)

        def on_generate(*values, progress=gr.Progress()):
            from .jobs import JobCancelled

            form = form_from(*values)
            try:
                out, sidecar = studio.generate(form, lambda done, total, left: progress((done, total), desc=f"step {done}/{total}, about {left:.0f} s left"))
            except JobCancelled as e:
                return None, None, f"Cancelled ({e}); nothing was written.", gr.update(), *errors(), *history_view()
            except MagrefInputError as e:
                return None, None, "", gr.update(), *errors(str(e)), *history_view()
            s = sidecar["settings"]
            note = f"Done in {sidecar['timings_s']['generate']:.1f} s: {out.name}, seed {s['seed']}." + "".join(f"\n\nNote: {w}" for w in studio.warnings)
            return str(out), [str(out), str(out.with_suffix('.json'))], note, gr.update(value=s["seed"]), *errors(), *history_view()

        def on_restore(name):
            if not name:
                return [gr.update()] * (len(form_inputs) - 1) + [gr.update()]
            f = studio.restore(studio.out_dir / name)
            rows = [[k + 1, Path(p).name, *(f.boxes[k] if f.boxes else [None] * 4)] for k, p in enumerate(f.refs)]
            return [f.refs, rows, f.prompt, f.negative_prompt or "", f.model, f.loras, f.height, f.width, f.frames, f.steps, f.guidance, f.shift,
                    f.solver, f.seed, False, f.layout_mode, f.layout_seed, f.preset, f.cache, f.fps]

        refs.change(on_refs, [refs, table], table, queue=False)
        preview_triggers = [table.change, layout_mode.change, layout_seed.change, height.change, width.change, model_id.change]
        for trigger in preview_triggers:
            trigger(on_preview, form_inputs, [canvas, mask, *error_boxes], queue=False)
        shuffle.click(on_shuffle, None, [layout_seed, layout_mode], queue=False)
        generate.click(on_generate, form_inputs, [video, files, status, seed, *error_boxes, history, pick], concurrency_limit=1)
        def on_cancel():
            # any running job: the page does not yet pass its session to Studio (its owner argument)
            studio.cancel()
            return gr.update(value="Cancelling at the end of this step…", interactive=False)

        def on_cancelled():
            studio.wait_until_stopped(timeout=3600)
            return gr.update(value="Cancel", interactive=True)

        # The status belongs to the generation alone: a cancel that wrote it too raced the job's own
        # "Cancelled" line (under load the cancel's reply came last and hid it); the button says
        # it is cancelling, and comes back once the job has stopped.
        cancel.click(on_cancel, None, cancel, queue=False).then(on_cancelled, None, cancel, queue=False)
        restore.click(on_restore, pick, form_inputs, queue=False)
        page.load(history_view, None, [history, pick], queue=False)
    return page


def _int(value):
    v = _num(value, None)
    return None if v is None else int(v)


def serve(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, no_auth: bool = False, out_dir: str | Path = DEFAULT_OUT_DIR,
          model: str = "miniature", device: str | None = None, open_browser: bool = False) -> None:
    """Build the page and serve it (blocks). Refuses an exposed host without a password."""
    credentials = None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise MagrefInputError("--auth must be USER:PASS.", "e.g. --auth me:a-long-password.")
        credentials = (user, password)
    if host not in LOOPBACK:
        if credentials is None and not no_auth:
            raise MagrefInputError(f"--host {host} would let anyone on the network use this machine, with no password.",
                                   "add --auth USER:PASS, or --no-auth if the network is yours alone.")
        print(f"magref app: warning: serving on {host}: reachable from other machines" + ("" if credentials else ", without a password"), file=sys.stderr)
    from .acceleration import AccelerationOptions

    AccelerationOptions(device=device).resolve_device()  # refused here, not on the page's first Generate, which cannot change it
    studio = Studio(out_dir, device)
    page = build_ui(studio, model)
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    # quiet: gradio's own lines suggest share=True, a public link this app never makes. GRADIO_DEBUG
    # would make launch() block despite prevent_thread_lock, and then block_thread() after it
    os.environ.pop("GRADIO_DEBUG", None)
    page.launch(server_name=host, server_port=port, auth=credentials, share=False, max_file_size=MAX_UPLOAD, inbrowser=open_browser,
                allowed_paths=[str(studio.out_dir.resolve())], show_error=True, css=CSS, quiet=True, prevent_thread_lock=True)
    print(f"magref app: open {page.local_url} (videos go to {studio.out_dir}; Ctrl-C stops it)", flush=True)
    page.block_thread()  # what launch() does when it keeps the thread
