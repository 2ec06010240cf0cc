"""Evaluation with known truth: the world knows every identity and every motion.

- identity: is the referenced identity recognisable in the video? Against 7 distractor identities
  of the same kind, top-1 = the true one scores best; reported as top-1 accuracy and as the
  margin over the best distractor, by two tests: the learnt identity classifier
  (`world.identify`, trained on held-out subjects as the miniature's VAE decodes them; the
  primary test) and the colour matcher (region hue histograms,
  `bench.metrics.subject_colour`), which a VAE's blur defeats on the world's own clips.
- motion (text alignment): the subject is located in every frame by back-projecting its colour
  histogram; the trajectory (centroid x, y and area) is classified into the world's motions and
  compared with the caption's.
- quality: `bench.metrics.quality` (flicker and noise penalties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..bench.metrics import MetricInput, hue_saturation_histogram, quality, subject_colour
from ..composition import to_rgb_on_white
from .identities import distractors_for, identity_ids
from .clips import MOTIONS, caption
from .render import SCENES, identity, render_subject


def sprite_on_white(identity_id: int, size: int = 64) -> Image.Image:
    return to_rgb_on_white(render_subject(identity(identity_id), size))


def identity_match(frames: np.ndarray, true_id: int, distractors: list[int]) -> tuple[bool, float]:
    x = MetricInput(frames, [], "")
    score = lambda i: subject_colour(x, render_subject(identity(i), 64))  # noqa: E731
    true = score(true_id)
    best_other = max(score(i) for i in distractors)
    return true > best_other, true - best_other


def trajectory(frames: np.ndarray, identity_id: int) -> np.ndarray:
    """(F, 3): centroid x, centroid y (fractions of the frame) and area fraction of the pixels
    whose colours belong to the identity's sprite."""
    import cv2

    sprite = np.asarray(render_subject(identity(identity_id), 64))
    hist = hue_saturation_histogram(sprite[..., :3], sprite[..., 3]).reshape(18, 8).astype(np.float32)
    hist /= max(hist.max(), 1e-9)
    out = []
    for frame in frames:
        hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV)
        prob = cv2.calcBackProject([hsv], [0, 1], (hist * 255).astype(np.float32), [0, 180, 0, 256], 1) / 255.0
        mask = prob > 0.3
        h, w = mask.shape
        if mask.sum() < 4:
            out.append((np.nan, np.nan, 0.0))
            continue
        ys, xs = np.nonzero(mask)
        out.append((xs.mean() / w, ys.mean() / h, mask.mean()))
    return np.asarray(out)


def classify_motion(traj: np.ndarray) -> str:
    ok = ~np.isnan(traj[:, 0])
    if ok.sum() < 3:
        return "unknown"
    t = np.linspace(0, 1, len(traj))[ok]
    x, y, a = traj[ok, 0], traj[ok, 1], traj[ok, 2]
    dx = np.polyfit(t, x, 1)[0]
    da = np.polyfit(t, np.sqrt(a + 1e-9), 1)[0] / max(np.sqrt(a.mean()), 1e-6)
    dy = y.max() - y.min()
    scores = {
        "moves from left to right": dx,
        "moves from right to left": -dx,
        "comes closer": 0.6 * da,
        "moves away": -0.6 * da,
        "jumps up and down": dy - abs(dx),
    }
    return max(scores, key=scores.get)


@dataclass
class EvalCase:
    ids: list[int]
    motions: list[str]
    scene: str
    prompt: str
    seed: int


def eval_cases(subjects: int, n: int, seed: int = 0, caption_style: str = "kind") -> list[EvalCase]:
    """Held-out identities only; one motion per subject; captions in the training template."""
    pool = identity_ids("heldout")
    cases = []
    for k in range(n):
        rng = np.random.default_rng([99, seed, subjects, k])
        ids = [int(i) for i in rng.choice(pool, size=subjects, replace=False)]
        motions = [str(rng.choice(list(MOTIONS))) for _ in ids]
        scene = str(rng.choice(SCENES))
        cases.append(EvalCase(ids, motions, scene, caption([identity(i) for i in ids], motions, scene, caption_style), seed * 1000 + k))
    return cases


# each true identity is scored against this many others of its kind: top-1 by chance is 1 / (1 + it)
DISTRACTORS = 7
IDENTITY_CHANCE = 1.0 / (1 + DISTRACTORS)


def score_video(frames: np.ndarray, case: EvalCase, num_distractors: int = DISTRACTORS, identifier=None, tracker=None) -> dict:
    """Every metric of one video; `identifier` (world.identify) adds the learnt identity test,
    `tracker` (world.track) the learnt motion test."""
    from .identify import identify_video, identity_hit

    rng = np.random.default_rng([7, case.seed])
    learnt = identify_video(identifier, frames) if identifier is not None else None
    hits, margins, learnt_hits, learnt_margins, motion_ok = [], [], [], [], []
    for i, motion in zip(case.ids, case.motions):
        others = distractors_for(i, num_distractors, rng)
        hit, margin = identity_match(frames, i, others)
        hits.append(hit)
        margins.append(margin)
        if learnt is not None:
            hit, margin = identity_hit(learnt, i, others)
            learnt_hits.append(hit)
            learnt_margins.append(margin)
        motion_ok.append(classify_motion(trajectory(frames, i)) == motion)
    row = {"identity_top1": float(np.mean(hits)), "identity_margin": float(np.mean(margins)),
           "motion_accuracy": float(np.mean(motion_ok)), "quality": quality(MetricInput(frames, [], ""))}
    if learnt is not None:
        row.update(identity_learnt_top1=float(np.mean(learnt_hits)), identity_learnt_margin=float(np.mean(learnt_margins)))
    if tracker is not None:
        row.update(learnt_motion(frames, case, tracker))
    return row


def learnt_motion(frames: np.ndarray, case: EvalCase, tracker) -> dict:
    """{"motion_learnt_accuracy": the share of the case's subjects whose predicted masks move as
    the caption says}, by the colour tracker's rule on the masks' trajectories."""
    from .track import track

    return {"motion_learnt_accuracy": float(np.mean([classify_motion(track(tracker, frames, i)) == m for i, m in zip(case.ids, case.motions)]))}


# ----------------------------------------------------------------------------------------------
# Models against the truth: `magref world evaluate`
# ----------------------------------------------------------------------------------------------
def generate_case(pipe, case: EvalCase, seed: int, steps: int, guidance: float, size: int = 64, frames: int = 13, layout=None,
                  drop_first_frames: int | None = None, **pipe_kwargs) -> np.ndarray:
    """(F, H, W, 3) uint8: the model's video for a case, references = the held-out sprites on white;
    `layout` None is the official grid, `drop_first_frames` None the pipeline's default;
    `pipe_kwargs` go to the pipeline (e.g. a step callback of an experiment)."""
    import torch

    from ..pipeline import to_uint8_frames

    refs = [sprite_on_white(i, 96) for i in case.ids]
    extra = {} if drop_first_frames is None else {"drop_first_frames": drop_first_frames}
    out = pipe(prompt=case.prompt, references=refs, negative_prompt="", height=size, width=size, num_frames=frames,
               num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np",
               layout=layout, **extra, **pipe_kwargs)
    return to_uint8_frames(out.frames[0])


def truth_case(case: EvalCase, seed: int, frames: int = 9, size: int = 64) -> np.ndarray:
    """The world's own rendering of the case: the ceiling of every metric."""
    from .clips import make_clip

    return make_clip([identity(i) for i in case.ids], np.random.default_rng([case.seed, seed]), frames=frames, height=size, width=size,
                     motions=case.motions, scene=case.scene).frames


def model_size(spec: str) -> int:
    """The frame size a model was trained at: a run's `run.json`, a folder's generation defaults, else 64."""
    import json
    from pathlib import Path

    from .train import run_size

    path = Path(spec.partition("@")[0]).expanduser()
    if (path / "dit").is_dir():
        return run_size(path)
    if path.name == "final" and (path.parent.parent / "run.json").is_file():  # a run's dit/final pipeline
        return run_size(path.parent.parent)
    defaults = path / "generation_defaults.json"
    return int(json.loads(defaults.read_text()).get("height", 64)) if defaults.is_file() else 64


def load_model_spec(spec: str):
    """`PATH` (a pipeline folder, or a `magref world train` run: its latest checkpoint) or `RUN@STEP`."""
    from pathlib import Path

    from ..models import load_pipeline
    from .train import pipeline_from_run

    path, _, step = spec.partition("@")
    if (Path(path).expanduser() / "dit").is_dir():
        return pipeline_from_run(path, int(step) if step else None)
    return load_pipeline(path)


METRICS = {  # key: column
    "identity_learnt_top1": "identity top-1 (learnt)", "identity_learnt_margin": "margin (learnt, logits)",
    "identity_top1": "identity top-1 (colour)", "identity_margin": "margin (colour)",
    "motion_learnt_accuracy": "motion accuracy (learnt)", "motion_accuracy": "motion accuracy (colour)", "quality": "quality",
}
LEARNT_TOP1 = "identity_learnt_top1"
HIGHER_LOWER = "identity_learnt_top1_higher_lower"  # paired videos where a's learnt top-1 is above / below b's


def _mean_and_error(values: list[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) of a table cell; one value has no spread to report (0)."""
    v = np.array(values, float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0, len(v)


def _read_results(path) -> list[dict]:
    """The rows of a results.jsonl (none when it is absent)."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summarise(rows: list[dict]) -> dict:
    """{model: {subjects: {metric: (mean, standard error, n)}}}; a metric that some rows lack
    (results written before it existed) is left out of that cell."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["model"], {}).setdefault(r["subjects"], []).append(r)
    out: dict = {}
    for model, by_k in groups.items():
        for k, rs in sorted(by_k.items()):
            stats = {}
            for m in METRICS:
                if any(m not in r for r in rs):
                    continue
                stats[m] = _mean_and_error([r[m] for r in rs])
            out.setdefault(model, {})[k] = stats
    return out


def results_of(folder, model: str | None = None) -> list[dict]:
    """The rows of one model in a `world evaluate` folder (`model`: its name; default the only
    model there besides the ground truth)."""
    from pathlib import Path

    from ..errors import MagrefInputError

    path = Path(folder).expanduser() / "results.jsonl"
    if not path.is_file():
        raise MagrefInputError(f"{path} does not exist.", "give a folder that `magref world evaluate --out` wrote.")
    rows = _read_results(path)
    names = sorted({r["model"] for r in rows})
    if not names:
        raise MagrefInputError(f"{path} holds no results yet.", "let `magref world evaluate` finish a video there first.")
    if model is None:
        made = [n for n in names if n != "ground truth"] or names
        if len(made) != 1:
            raise MagrefInputError(f"{folder} holds several models ({', '.join(made)}).", f"name one: {folder}#MODEL.")
        model = made[0]
    if model not in names:
        raise MagrefInputError(f"{folder} holds no model {model!r} (it holds {', '.join(names)}).", "name one of those.")
    return [r for r in rows if r["model"] == model]


def paired_differences(a: list[dict], b: list[dict]) -> dict:
    """{subjects or "all": {metric: (mean of a - b, its standard error, pairs)}} over the videos
    both sides made of the same case and seed: paired, so the cases' own spread cancels; with the
    learnt top-1, also {HIGHER_LOWER: (videos where a's is higher, where it is lower)}."""
    from ..errors import MagrefInputError

    va, vb = {r.get("case_seed", 2) for r in a}, {r.get("case_seed", 2) for r in b}
    if va != vb:  # the same case names are other identities, motions and scenes
        raise MagrefInputError(f"The two sides were made with other case seeds ({sorted(va)} and {sorted(vb)}): their cases differ.",
                               "compare results of the same --case-seed.")
    by_b = {(r["case"], r["seed"]): r for r in b}
    pairs = [(r, by_b[(r["case"], r["seed"])]) for r in a if (r["case"], r["seed"]) in by_b]
    if any(ra["ids"] != rb["ids"] or ra.get("prompt") != rb.get("prompt") for ra, rb in pairs):
        raise MagrefInputError("The two sides name the same cases with other identities or prompts.",
                               "compare results of the same --case-seed and --captions.")
    if not pairs:
        raise MagrefInputError("The two sides share no (case, seed) video.", "evaluate both on the same --cases and --seeds.")
    out: dict = {}
    for k in sorted({ra["subjects"] for ra, _ in pairs}) + ["all"]:
        group = [(ra, rb) for ra, rb in pairs if k == "all" or ra["subjects"] == k]
        diffs = {m: [ra[m] - rb[m] for ra, rb in group] for m in METRICS if all(m in ra and m in rb for ra, rb in group)}
        stats = {m: _mean_and_error(d) for m, d in diffs.items()}
        if LEARNT_TOP1 in diffs:  # a mean near 0 can be many videos flipping both ways or none: say which
            d = diffs[LEARNT_TOP1]
            stats[HIGHER_LOWER] = (sum(x > 0 for x in d), sum(x < 0 for x in d))
        out[k] = stats
    return out


def differences_markdown(diffs: dict, a: str, b: str) -> str:
    shown = [m for m in METRICS if any(m in s for s in diffs.values())]
    counts = any(HIGHER_LOWER in s for s in diffs.values())
    lines = [f"{a} minus {b}, paired by case and seed (mean ± standard error of the differences):", "",
             "| subjects | " + " | ".join(METRICS[m] for m in shown) + (" | videos higher / lower (learnt top-1)" if counts else "") + " | pairs |",
             "|---" * (len(shown) + 2 + counts) + "|"]
    for k, s in diffs.items():
        cells = [f"{s[m][0]:+.3f} ± {s[m][1]:.3f}" if m in s else "" for m in shown]
        if counts:
            cells.append("{} / {}".format(*s[HIGHER_LOWER]) if HIGHER_LOWER in s else "")
        pairs = next((s[m][2] for m in shown if m in s), 0)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {pairs} |")
    return "\n".join(lines) + "\n"


def table_markdown(summary: dict, chance: float) -> str:
    shown = [m for m in METRICS if any(m in s for by_k in summary.values() for s in by_k.values())]
    lines = ["| model | subjects | " + " | ".join(METRICS[m] for m in shown) + " | n |", "|---" * (len(shown) + 3) + "|"]
    for model, by_k in summary.items():
        for k, s in by_k.items():
            cells = [f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m in s else "" for m in shown]
            lines.append(f"| {model} | {k} | " + " | ".join(cells) + f" | {s['quality'][2]} |")
    lines.append(f"\nmean ± standard error over cases x seeds; identity top-1 by chance: {chance:.3f}; "
                 f"motion accuracy by chance: {1 / len(MOTIONS):.3f} ({len(MOTIONS)} motions).")
    return "\n".join(lines) + "\n"


def contact_sheet(rows: list[tuple[str, Image.Image, np.ndarray]], frames_shown: int = 5, cell: int = 256) -> Image.Image:
    """One row per model: label, the reference canvas, then evenly spaced frames of its video,
    each upscaled (nearest) to `cell` px so that a person can judge a 64 px frame."""
    from PIL import ImageDraw

    label_w = 120
    sheet = Image.new("RGB", (label_w + cell * (frames_shown + 1) + 8, cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, canvas, frames) in enumerate(rows):
        y = r * cell
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        sheet.paste(canvas.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w, y))
        for j, t in enumerate(np.linspace(0, len(frames) - 1, frames_shown).round().astype(int)):
            sheet.paste(Image.fromarray(frames[t]).resize((cell, cell), Image.NEAREST), (label_w + cell * (j + 1) + 8, y))
    return sheet


def _refuse_other(out, have: list, want, what: str, option: str) -> None:
    """A results folder holds one setting of `what`: a rerun with another would mix two tables."""
    other = sorted(set(have) - {want}, key=str)  # None (a default) beside numbers
    if other:
        from ..errors import MagrefInputError

        def shown(v):
            return "the model's own" if v is None else v

        raise MagrefInputError(f"{out} holds videos made with {what} {shown(other[0])}, not {shown(want)}.", f"use another --out for another {option}.")


def _video_path(out, model: str, case: str, seed: int):
    return out / "videos" / model.replace(" ", "_") / f"{case}_seed{seed}.mp4"


def _motion_test(tracker, size: int):
    """(the learnt motion test for videos of `size` px, its name): the one in `tracker` (a folder)
    or the shipped one; (None, None) when none is given and none ships for that size."""
    from pathlib import Path

    from ..errors import MagrefInputError
    from .track import TRACKER_PATHS, load_tracker, tracker_for

    model = load_tracker(tracker) if tracker else tracker_for(size)
    if model is None:
        return None, None
    if model.size != size:
        raise MagrefInputError(f"The motion test {tracker or TRACKER_PATHS[size]} was trained for {model.size} px videos, not {size}.",
                               f"pass one trained with `magref world tracker --size {size}`.")
    return model, (Path(tracker).expanduser().name if tracker else TRACKER_PATHS[size].name)


def _tracker_fields(follower, name: str | None) -> dict:
    """What a row scored by the learnt motion test records of it: its folder's name, for people,
    and its weights' hash, which tells it from another test in a folder of the same name."""
    return {"tracker": name, "tracker_sha256": follower.sha256} if follower is not None else {}


def _check_one_tracker(out, rows: list[dict], follower, name: str | None) -> None:
    """A folder's learnt motion column comes from one test: the rows it scored record its weights'
    hash (rows from before the hash was recorded: its folder's name), and another is refused."""
    sha = getattr(follower, "sha256", None)
    known = {r.get("tracker"): r["tracker_sha256"] for r in rows if "tracker_sha256" in r}  # an older row's test, by its name

    def row_sha(r):
        return r.get("tracker_sha256") or known.get(r.get("tracker"))

    def same(r):
        if follower is None:
            return False
        return row_sha(r) == sha if row_sha(r) is not None else r.get("tracker") == name

    other = next((r for r in rows if "motion_learnt_accuracy" in r and not same(r)), None)
    if other is not None:
        from ..errors import MagrefInputError

        was = other.get("tracker") or "(unnamed)"
        now = f"the motion test {name}" if name else "no learnt motion test (none ships for these videos)"
        fix = f"pass --tracker with {was}'s folder, or use another --out." if other.get("tracker") else "use another --out."
        if follower is not None and was == name:
            now = f"the motion test {name} given now, whose weights differ (sha256 {sha[:12]}, not {row_sha(other)[:12]})"
            fix = f"pass --tracker with the folder whose model.safetensors has sha256 {row_sha(other)[:12]}..., or use another --out."
        raise MagrefInputError(f"{out}'s videos were scored by the motion test {was}, not by {now}.", fix)


def rescore(folder, tracker=None, log=print) -> int:
    """Add the learnt motion test to the rows of a `world evaluate` folder that lack it, from the
    videos the folder kept (as written: mp4, so a score may differ from an in-memory one by the
    codec's rounding), and rewrite its table and summary. Returns how many rows were scored."""
    import json
    import os
    from pathlib import Path

    from ..errors import MagrefInputError
    from ..io import read_video, write_json

    folder = Path(folder).expanduser()
    rows = _read_results(folder / "results.jsonl")
    if not rows:
        raise MagrefInputError(f"{folder / 'results.jsonl'} holds no results.", "give a folder that `magref world evaluate --out` wrote.")
    sizes = sorted({r.get("size", 64) for r in rows})
    if len(sizes) > 1:
        raise MagrefInputError(f"{folder} holds videos of several sizes ({sizes} px).", "rescore folders of one size (as `world evaluate` writes them).")
    follower, name = _motion_test(tracker, sizes[0])
    if follower is None:
        raise MagrefInputError(f"No learnt motion test ships for {sizes[0]} px videos.", f"pass --tracker FOLDER (`magref world tracker --size {sizes[0]}`).")
    _check_one_tracker(folder, rows, follower, name)
    todo = [r for r in rows if "motion_learnt_accuracy" not in r]
    for r in todo:
        k, j = r["subjects"], int(r["case"].split("_")[1])
        case = eval_cases(k, j + 1, seed=r.get("case_seed", 2))[j]
        if case.ids != r["ids"]:
            raise MagrefInputError(f"{folder}: case {r['case']} of case seed {r.get('case_seed', 2)} has identities {case.ids}, the results {r['ids']}.",
                                   "evaluate the models again into a new --out (the cases' draw has changed since).")
        video = _video_path(folder, r["model"], r["case"], r["seed"])
        if video.is_file():
            frames = read_video(video)
        elif r.get("spec") is None:  # the ground truth is rendered again, exactly as evaluate made it
            frames = truth_case(case, r["seed"], size=r.get("size", 64))
        else:
            raise MagrefInputError(f"{folder}: no video {video.relative_to(folder)} for {r['model']}'s case {r['case']}, seed {r['seed']}.",
                                   "rescore the folder `world evaluate` wrote the videos into (a merged results file has none).")
        r.update(learnt_motion(frames, case, follower), **_tracker_fields(follower, name))
    tmp = folder / "results.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, folder / "results.jsonl")
    summary = summarise(rows)
    if (folder / "summary.json").is_file():
        settings = json.loads((folder / "summary.json").read_text()).get("settings", {})
        write_json(folder / "summary.json", {"settings": {**settings, **_tracker_fields(follower, name)}, "summary": summary})
    (folder / "table.md").write_text(table_markdown(summary, IDENTITY_CHANCE))
    log(f"world rescore: {len(todo)} of {len(rows)} videos scored by the learnt motion test ({name}) -> {folder / 'table.md'}")
    return len(todo)


def evaluate(models: dict[str, str], out, subjects=(1, 2, 3), cases: int = 10, seeds=(0, 1), steps: int = 25, guidance: float = 5.0,
             truth: bool = True, case_seed: int = 2, log=print, caption_style: str = "kind", identifier=None, size: int | None = None,
             device=None, shift: float | None = None, tracker=None) -> dict:
    """Generate every (model, case, seed) video, score it against the truth, and write
    results.jsonl (one line per video; a rerun skips what is there), summary.json, table.md and
    sheets/<case>.png (reference canvas beside frames of every model). Videos go to videos/.
    `identifier`: a folder of the learnt identity test (default: the shipped one); `tracker`: one
    of the learnt motion test (default: the shipped one for the size, if any). `size`: the
    videos' height and width (default: what the models were trained at; they must agree).
    `device`: where the models run (default: cuda when available). `shift`: the sampler's flow
    shift (default: each model's scheduler's)."""
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..composition import compose_references
    from ..io import read_video, write_json, write_video

    from ..request import check_guidance, check_shift

    check_guidance(guidance)  # before the folder exists: a refused value is never recorded
    if shift is not None:
        check_shift(shift)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = _read_results(results)
    # the same case names are other cases under another case seed; a table mixes no settings
    _refuse_other(out, [r.get("case_seed", 2) for r in rows], case_seed, "case seed", "--case-seed")
    made = [r for r in rows if r.get("spec")]  # the ground truth takes no sampling settings
    _refuse_other(out, [r["steps"] for r in made], steps, "steps", "--steps")
    _refuse_other(out, [r["guidance"] for r in made], guidance, "guidance", "--guidance")
    _refuse_other(out, [r.get("shift") for r in made], shift, "shift", "--shift")
    if size is None:
        sizes = {model_size(spec) for spec in models.values()} or {64}
        if len(sizes) > 1:
            from ..errors import MagrefInputError

            raise MagrefInputError(f"The models were trained at different sizes ({sorted(sizes)} px).", "evaluate them apart, or pass --size.")
        size = sizes.pop()
    _refuse_other(out, [r.get("size", 64) for r in rows], size, "size (px)", "size")
    from ..distributed import default_device

    device = device or default_device()
    done = {(r["model"], r["case"], r["seed"]) for r in rows}
    all_cases = {k: eval_cases(k, cases, seed=case_seed, caption_style=caption_style) for k in subjects}
    sources = ({"ground truth": None} if truth else {}) | models
    todo = [(name, k, j, s) for name in sources for k in subjects for j in range(cases) for s in seeds if (name, f"{k}s_{j}", s) not in done]
    from .identify import identifier_path, load_identifier

    identifier = Path(identifier).expanduser() if identifier else identifier_path(size)
    judge = load_identifier(identifier)
    follower, tracker_name = _motion_test(tracker, size)
    _check_one_tracker(out, rows, follower, tracker_name)
    if follower is not None and any("motion_learnt_accuracy" not in r for r in rows):
        log(f"world evaluate: {sum('motion_learnt_accuracy' not in r for r in rows)} videos there lack the learnt motion test: "
            f"`magref world rescore {out}` adds it")
    pipes: dict = {}
    with open(results, "a") as f:
        for name, k, j, s in tqdm(todo, desc="evaluate", unit="video"):
            case = all_cases[k][j]
            if sources[name] is None:
                frames = truth_case(case, s, size=size)
            else:
                if name not in pipes:
                    pipes.clear()  # one model in memory at a time
                    pipes[name] = load_model_spec(sources[name]).to(device)
                    pipes[name].set_progress_bar_config(disable=True)
                frames = generate_case(pipes[name], case, s, steps, guidance, size=size, shift=shift)
            video = _video_path(out, name, f"{k}s_{j}", s)
            video.parent.mkdir(parents=True, exist_ok=True)
            write_video(video, frames, 8.0)
            row = {"model": name, "spec": sources[name], "case": f"{k}s_{j}", "case_seed": case_seed, "size": size,
                   "device": str(device) if sources[name] else None, "subjects": k, "seed": s, "ids": case.ids,
                   "prompt": case.prompt,
                   "steps": steps, "guidance": guidance, "shift": shift, **score_video(frames, case, identifier=judge, tracker=follower)}
            row.update(_tracker_fields(follower, tracker_name))
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
    summary = summarise([r for r in rows if r["model"] in sources])
    write_json(out / "summary.json", {"settings": {"cases_per_count": cases, "seeds": list(seeds), "steps": steps, "guidance": guidance, "shift": shift,
                                                    "case_seed": case_seed, "size": size, "captions": caption_style, "models": models,
                                                    "identifier": identifier.name,
                                                    **(_tracker_fields(follower, tracker_name) or {"tracker": None})}, "summary": summary})
    (out / "table.md").write_text(table_markdown(summary, IDENTITY_CHANCE))
    # pictures: the first case of each subject count, first seed, every model
    (out / "sheets").mkdir(exist_ok=True)
    for k in subjects:
        case = all_cases[k][0]
        canvas = compose_references([sprite_on_white(i, 96) for i in case.ids], size, size).canvas
        sheet_rows = []
        for name in sources:
            video = _video_path(out, name, f"{k}s_0", seeds[0])
            if video.is_file():
                sheet_rows.append((name, canvas, read_video(video)))
        if sheet_rows:
            contact_sheet(sheet_rows).save(out / "sheets" / f"{k}s_0.png")
    log(f"world evaluate: {len(rows)} videos scored -> {out / 'table.md'}")
    return summary
