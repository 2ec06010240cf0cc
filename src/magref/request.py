"""One generation request: its settings, its references read and composed once, the model it is for.

Every face of magref (`generate`, `batch`, `bench generate`) builds a `GenerationRequest`
here and hands it to `jobs`; nothing downstream validates or composes it again. Building one is
where bad input fails (one line naming the problem and the fix), before any model loads:

    spec = ModelSpec.resolve("miniature")
    request = GenerationRequest.prepare(GenerationSettings(prompt="...", refs=["a.png"], **spec.defaults()), spec)

The canvas is composed in the model's own latent cells (`ModelSpec.geometry`: the VAE's spatial
stride and the transformer's patch, read from the model's configs without loading weights).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .composition import MAX_GRID_REFERENCES, Composition, RegionLayout, check_canvas_size, compose_references, grid_size_for
from .conditioning import TEMPORAL_STRIDE, check_num_frames
from .defaults import DROP_FIRST_FRAMES, OFFICIAL_SETTINGS, SOLVER_CHOICES
from .errors import MagrefInputError
from .io import load_reference, sha256_file


# What one request may ask for: past these a run would fail hours in or exhaust memory.
LIMITS = dict(side=2048, frames=1001, voxels=720 * 1280 * 161, steps=1000, seed=2**63 - 1, fps=240)


def _check_finite(name: str, value, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MagrefInputError(f"{name} {value} is not a finite number.", fix + ".")


def check_guidance(value: float) -> None:
    """The one rule for a guidance scale, a request's or a model folder's default: a finite number,
    1 or more. At 1 or below the pipeline makes no unconditional pass (diffusers' `guidance_scale > 1`),
    so a value below 1 would silently sample as 1; it is refused rather than ignored (the official
    code, which always makes both passes, would extrapolate away from the prompt instead)."""
    _check_finite("guidance", value, "use e.g. --guidance 5.0 (1 turns guidance off)")
    if value < 1:
        raise MagrefInputError(f"Guidance {value} is below 1: guidance at or below 1 makes no unconditional pass, so it would sample as 1.",
                               "use 1 to turn guidance off (one pass per step), or more, e.g. --guidance 5.0.")


def check_shift(value: float) -> None:
    """A sampler's flow shift: a finite number above 0, a request's or an evaluation's."""
    _check_finite("shift", value, "use e.g. --shift 3.0 (480p) or 5.0 (720p)")
    if value <= 0:
        raise MagrefInputError(f"Shift {value} must be positive.", "use e.g. --shift 3.0 (480p) or 5.0 (720p).")


@dataclass
class GenerationSettings:
    """What a user asks for, in the CLI's names (the pipeline's are diffusers': `num_frames`,
    `num_inference_steps`, `guidance_scale`). Defaults: the official 480p ones; a model folder's
    `generation_defaults.json` overrides them through `ModelSpec.defaults`."""

    prompt: str
    refs: list[str]
    negative_prompt: str | None = None
    height: int = OFFICIAL_SETTINGS["height"]
    width: int = OFFICIAL_SETTINGS["width"]
    frames: int = OFFICIAL_SETTINGS["frames"]
    steps: int = OFFICIAL_SETTINGS["steps"]
    guidance: float = OFFICIAL_SETTINGS["guidance"]
    shift: float = OFFICIAL_SETTINGS["shift"]
    seed: int = OFFICIAL_SETTINGS["seed"]
    solver: str = OFFICIAL_SETTINGS["solver"]
    layout: str | dict | None = None  # layout file path or dict (see RegionLayout.from_json)
    layout_seed: int | None = None
    fps: float = OFFICIAL_SETTINGS["fps"]
    keep_first_frames: bool = False
    # Sliding context windows (context_windows.py): None = windows of the model's trained length
    # when `frames` exceeds it; 0 = one pass over all frames, as Wan does past 81
    context_frames: int | None = None
    context_overlap: int | None = None  # default: about a quarter of a window, a multiple of 4
    context_blend: str = "linear"

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @property
    def drop_first_frames(self) -> int:
        return 0 if self.keep_first_frames else DROP_FIRST_FRAMES

    def validate(self, geometry: tuple[int, int] = (8, 2)) -> None:
        """Every setting on its own, type and range, for a model whose (VAE stride, patch) is
        `geometry`. Settings come from the command line and JSON batch lines alike, so
        a string where a number belongs is refused here, with the setting named."""
        self._check_types()
        if not self.prompt.strip():
            raise MagrefInputError("The prompt is empty.", "pass a text prompt with --prompt.")
        for name in ("height", "width"):
            if getattr(self, name) > LIMITS["side"]:
                raise MagrefInputError(f"{name} {getattr(self, name)} is over the limit of {LIMITS['side']} pixels.",
                                       f"use at most --{name} {LIMITS['side']} (the official sizes are 480x832 and 720x1280).")
        check_canvas_size(self.height, self.width, *geometry)
        if self.frames > LIMITS["frames"]:
            raise MagrefInputError(f"{self.frames} frames is over the limit of {LIMITS['frames']}.", f"use at most --frames {LIMITS['frames']}.")
        if self.frames <= self.drop_first_frames:  # before the 4n+1 check, whose "e.g. 1" would be refused here
            fewest = self.drop_first_frames + 1 + (-self.drop_first_frames) % 4  # the first 4n+1 that leaves a frame
            kept = self.frames >= 1 and (self.frames - 1) % 4 == 0  # a valid count that --keep-first-frames would keep
            raise MagrefInputError(
                f"{self.frames} frames minus the {self.drop_first_frames} dropped first frames leaves no frame." if self.drop_first_frames
                else f"Frame count {self.frames} is below 1.",
                f"use --frames {fewest} (or {fewest + 4}, {fewest + 8}, ...)" + (", or --keep-first-frames." if kept and self.drop_first_frames else "."),
            )
        check_num_frames(self.frames)
        if self.height * self.width * self.frames > LIMITS["voxels"]:
            raise MagrefInputError(
                f"A {self.width}x{self.height} video of {self.frames} frames is over the limit of {LIMITS['voxels']:,} pixels x frames "
                "(720x1280 at 161 frames), beyond what one machine's memory holds.",
                "use a smaller size or fewer frames.")
        if not self.refs:
            raise MagrefInputError("No reference image was given.", "pass 1 to 16 images with --ref.")
        if self.layout is not None and self.layout_seed is not None:
            raise MagrefInputError("Both a layout and a layout seed were given; the seed would be ignored.",
                                   "pass --layout (your boxes) or --layout-seed (the official random placement), not both.")
        if self.layout is None:
            grid_size_for(len(self.refs))
        if not 1 <= self.steps <= LIMITS["steps"]:
            raise MagrefInputError(f"Step count {self.steps} is not between 1 and {LIMITS['steps']}.", "use e.g. --steps 40.")
        if self.solver not in SOLVER_CHOICES:
            raise MagrefInputError(f"Unknown solver {self.solver!r}.", f"use one of {', '.join(SOLVER_CHOICES)}.")
        if not 0 <= self.seed <= LIMITS["seed"]:
            raise MagrefInputError(f"Seed {self.seed} is outside 0..2^63-1 (what torch.Generator takes).", "use e.g. --seed 3407.")
        if self.layout_seed is not None and not 0 <= self.layout_seed <= LIMITS["seed"]:
            raise MagrefInputError(f"Layout seed {self.layout_seed} is outside 0..2^63-1.", "use e.g. --layout-seed 1.")
        for name, fix in (("guidance", "use e.g. --guidance 5.0 (1 turns guidance off)"), ("shift", "use e.g. --shift 3.0 (480p) or 5.0 (720p)"),
                          ("fps", "use e.g. --fps 15")):
            _check_finite(name, getattr(self, name), fix)  # all three before any bound, as the messages are ordered
        check_guidance(self.guidance)
        check_shift(self.shift)
        if self.fps <= 0 or self.fps > LIMITS["fps"]:
            raise MagrefInputError(f"fps {self.fps} is not above 0 and at most {LIMITS['fps']}.", "use e.g. --fps 15.")

    def _check_types(self) -> None:
        def refuse(name, value, what, example):
            raise MagrefInputError(f"Setting {name!r} is {value!r}, not {what}.", f"write it as {example}.")

        if not isinstance(self.prompt, str):
            refuse("prompt", self.prompt, "a string", '"prompt": "a person waves"')
        if not isinstance(self.refs, (list, tuple)) or not all(isinstance(r, (str, os.PathLike)) for r in self.refs):
            refuse("refs", self.refs, "a list of image paths", '"refs": ["a.png", "b.png"]')
        for name in ("height", "width", "frames", "steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                refuse(name, value, "a whole number", f'"{name}": {getattr(GenerationSettings, name)}')
        for name in ("guidance", "shift", "fps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                refuse(name, value, "a number", f'"{name}": {getattr(GenerationSettings, name)}')
        if self.layout_seed is not None and (isinstance(self.layout_seed, bool) or not isinstance(self.layout_seed, int)):
            refuse("layout_seed", self.layout_seed, "a whole number", '"layout_seed": 1')
        if not isinstance(self.keep_first_frames, bool):
            refuse("keep_first_frames", self.keep_first_frames, "true or false", '"keep_first_frames": true')
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            refuse("negative_prompt", self.negative_prompt, "a string", '"negative_prompt": "blurry"')
        if self.layout is not None and not isinstance(self.layout, (str, dict, os.PathLike)):
            refuse("layout", self.layout, "a layout file path or object", '"layout": {"boxes": [[0, 0, 416, 480]]}')
        if not isinstance(self.solver, str):
            refuse("solver", self.solver, "a solver name", '"solver": "unipc"')
        for name in ("context_frames", "context_overlap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                refuse(name, value, "a whole number of frames", f'"{name}": 13')
        if not isinstance(self.context_blend, str):
            refuse("context_blend", self.context_blend, "a blend name", '"context_blend": "linear"')
        from .context_windows import BLENDS, ContextWindows

        if self.context_blend not in BLENDS:
            raise MagrefInputError(f"Unknown context blend {self.context_blend!r}.", f"use one of {', '.join(BLENDS)}.")
        if self.context_frames not in (None, 0):
            ContextWindows(self.context_frames, self._overlap(self.context_frames), self.context_blend)  # refuses a bad window
        elif self.context_overlap is not None and (self.context_overlap < 0 or self.context_overlap % TEMPORAL_STRIDE):
            raise MagrefInputError(f"Context overlap of {self.context_overlap} frames is not a multiple of 4.", "use e.g. --context-overlap 4.")

    def _overlap(self, window_frames: int) -> int:
        if self.context_overlap is not None:
            return self.context_overlap
        return TEMPORAL_STRIDE * max(1, (window_frames - 1) // TEMPORAL_STRIDE // 4)

    def context_windows(self, trained_frames: int):
        """The windows this video is made with (None: one pass), for a model trained on clips of
        `trained_frames` frames."""
        from .context_windows import ContextWindows

        frames = self.context_frames
        if frames is None:  # automatic: windows of the trained length, where that makes a window (>= 9 frames)
            frames = trained_frames if self.frames > trained_frames and trained_frames >= 1 + 2 * TEMPORAL_STRIDE else 0
        if frames == 0 or frames >= self.frames:
            return None
        return ContextWindows(frames, self._overlap(frames), self.context_blend)


def with_preset(options: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """User options (None: not given) with a preset's settings filling what was not given: only
    `turbo` has settings (defaults.TURBO_SETTINGS); the other presets change speed, not output."""
    from .defaults import TURBO_SETTINGS

    if preset != "turbo":
        return options
    return {**options, **{k: v for k, v in TURBO_SETTINGS.items() if options.get(k) is None}}


@dataclass(frozen=True)
class ModelSpec:
    """The model a request is for: a `--model` value and its LoRAs (resolved, not yet loaded)."""

    id: str
    loras: tuple[dict, ...] = ()  # models.resolve_lora records: file, scale (and hub_id)

    @classmethod
    def resolve(cls, model: str | None = None, loras: list[str] | None = None, scales: list[float] | None = None) -> "ModelSpec":
        """Pair every LoRA with its scale and find it (fetching a hub id) before any model loads,
        so a bad LoRA costs nothing."""
        from .models import DEFAULT_MODEL, resolve_lora

        loras, scales = loras or [], scales or []
        if scales and len(scales) != len(loras):
            raise MagrefInputError(f"{len(scales)} --lora-scale for {len(loras)} --lora.",
                                   "give one --lora-scale per --lora, in the same order, or none (1.0 each).")
        return cls(model or DEFAULT_MODEL, tuple(resolve_lora(p, s) for p, s in zip(loras, scales or [1.0] * len(loras))))

    def defaults(self) -> dict:
        """The settings this model was made for (its folder's generation_defaults.json) over the
        official ones, keyed as GenerationSettings."""
        from .models import generation_defaults

        return generation_defaults(self.id)

    def geometry(self) -> tuple[int, int]:
        from .models import spatial_geometry

        return spatial_geometry(self.id)

    def settings(self, options: dict[str, Any], **fields) -> GenerationSettings:
        """GenerationSettings from user options, where None means 'not given': the model's own
        defaults fill those in (then the official ones)."""
        given = {**{k: v for k, v in options.items() if v is not None}, **fields}
        defaults = self.defaults()
        if "guidance" not in given:  # a model folder's own guidance: the request's check could not say where it came from
            try:
                check_guidance(defaults["guidance"])
            except MagrefInputError as e:
                from .models import DEFAULTS_FILE

                raise MagrefInputError(f"The model {self.id}'s {DEFAULTS_FILE} sets a guidance the pipeline cannot use: {e.problem}",
                                       'pass --guidance G (1 or more), or set its "guidance" to 1 or more.') from None
        return GenerationSettings(**{**defaults, **given})


@dataclass
class GenerationRequest:
    """Settings validated and references composed, once, for one model: what jobs run."""

    settings: GenerationSettings
    composition: Composition
    model: ModelSpec
    reference_sizes: list[tuple[int, int]] = field(default_factory=list)  # each image as read, (w, h)
    prepare_s: float = 0.0  # seconds spent validating, reading and composing
    reference_sha256: list[str] = field(default_factory=list)  # each reference file as read
    context_windows: object | None = None  # context_windows.ContextWindows, or None for one pass

    def warnings(self) -> list[str]:
        """What the user should know but is allowed: one line each."""
        out = []
        n = len(self.settings.refs)
        if n > MAX_GRID_REFERENCES:
            grid = "an extended grid" if self.composition.layout.extended else "your layout"
            out.append(f"{n} references on {grid}: the official weights were trained with at most {MAX_GRID_REFERENCES}, so identities may suffer.")
        defaults = self.model.defaults()
        trained = defaults["frames"]
        if self.settings.frames > trained and self.context_windows is None:
            out.append(f"{self.settings.frames} frames in one pass, past the {trained} the model was trained on: expect drift (context windows are off).")
        w, h, w0, h0 = self.settings.width, self.settings.height, defaults["width"], defaults["height"]
        own = isinstance(w0, int) and isinstance(h0, int) and w0 > 0 and h0 > 0  # a model folder's own file may say anything
        if own and w * h > 4 * w0 * h0:  # the official 480p model's 720p (2.3x) is a size it was made for too
            out.append(f"{w}x{h} is {w * h / (w0 * h0):.1f} times the pixels of the {w0}x{h0} this model was made for: "
                       f"expect it to take far longer (attention grows with the square of the pixels) and to draw worse; "
                       f"--height {h0} --width {w0} gives its best.")
        return out

    def fingerprint(self, output_options: dict | None = None) -> str:
        """What the video depends on: every setting, the references' bytes, the layout as
        composed, the model (its files or id), its LoRAs, and the acceleration options that change
        the output (`AccelerationOptions.output_key`). A batch rerun regenerates an item whose
        finished video was made for another fingerprint."""
        import hashlib
        import json

        output_options = output_options or {}
        memo = getattr(self, "_fingerprints", None)
        if memo is None:
            memo = self._fingerprints = {}
        memo_key = json.dumps(output_options, sort_keys=True)
        if memo_key in memo:
            return memo[memo_key]

        from .models import model_fingerprint

        what = {
            "settings": {k: v for k, v in dataclasses.asdict(self.settings).items() if k not in ("refs", "layout")},
            "references": self.reference_sha256,
            "layout": self.composition.layout.to_dict(self.composition.spatial_stride),
            "model": model_fingerprint(self.model.id),
            "loras": [(lora.get("hub_id") or lora["file"], _file_sha256(lora["file"]), lora["scale"]) for lora in self.model.loras],
            **({"output_options": output_options} if output_options else {}),
        }
        memo[memo_key] = "sha256:" + hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return memo[memo_key]

    @classmethod
    def prepare(cls, settings: GenerationSettings, model: ModelSpec) -> "GenerationRequest":
        """Validate the settings, read every reference and compose them in the model's latent
        cells: everything that can fail on user input, before any model work."""
        t0 = time.perf_counter()
        stride, patch = model.geometry()
        settings.validate((stride, patch))
        images = [load_reference(p) for p in settings.refs]
        layout = RegionLayout.from_json(settings.layout, settings.height, settings.width) if settings.layout is not None else None
        composition = compose_references(images, settings.height, settings.width, layout=layout, layout_seed=settings.layout_seed,
                                         spatial_stride=stride, patch_size=patch)
        windows = settings.context_windows(model.defaults()["frames"])
        hashes = [sha256_file(p) for p in settings.refs]
        return cls(settings, composition, model, [im.size for im in images], time.perf_counter() - t0, hashes, windows)


def _file_sha256(path: str) -> str:
    """sha256 of a file, once per file version (a LoRA of hundreds of MB is hashed once per batch)."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)
