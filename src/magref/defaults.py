"""Official MAGREF defaults (480p checkpoint), importable without any model code."""

# Wan2.1's default negative prompt with MAGREF's "camera shake" (镜头晃动) term in front.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)
MAGREF_NEGATIVE_PROMPT = "镜头晃动，" + WAN_NEGATIVE_PROMPT

# Official defaults (480p checkpoint).
DEFAULTS = dict(height=480, width=832, num_frames=81, num_inference_steps=40, guidance_scale=5.0, shift=3.0, fps=15, seed=3407)
# The same values under the names of GenerationSettings and the CLI (`--frames`, `--steps`,
# `--guidance`); the pipeline keeps diffusers' names above. Every default reads one of these two.
OFFICIAL_SETTINGS = dict(height=DEFAULTS["height"], width=DEFAULTS["width"], frames=DEFAULTS["num_frames"], steps=DEFAULTS["num_inference_steps"],
                         guidance=DEFAULTS["guidance_scale"], shift=DEFAULTS["shift"], fps=DEFAULTS["fps"], seed=DEFAULTS["seed"], solver="unipc")
SOLVER_CHOICES = ("unipc", "dpm++", "euler")  # the official flow UniPC and DPM++; flow Euler for turbo (schedulers.py)

# Speed presets and step caches (acceleration.py applies them); here so the CLI lists them
# without importing torch.
PRESETS = {
    "quality": dict(batched_cfg=False, compile=False, offload=False),
    "fast": dict(batched_cfg=True, compile=True, offload=False),
    "lowmem": dict(batched_cfg=False, compile=False, offload=True),
    # a step-distilled LoRA's settings (TURBO_SETTINGS): guidance 1 runs no unconditional pass
    "turbo": dict(batched_cfg=False, compile=False, offload=False),
}
# What `--preset turbo` sets unless the user gives it: the few-step, guidance-free sampling that
# step-distilled Wan LoRAs (e.g. the 4-step I2V distillations) are made for. Without such a LoRA a
# base model's turbo video is a fast draft, not its quality.
TURBO_SETTINGS = dict(steps=4, guidance=1.0, shift=5.0, solver="euler")
CACHES = ("none", "fbcache", "taylorseer", "magcache")
DROP_FIRST_FRAMES = 4  # the first decoded frames reproduce the canvas; the official output drops them

# `magref world train`'s budget: the recipe of the bundled miniature (`assets/models/miniature`),
# in one run (docs/miniature-world.md says how the shipped weights were made).
MINIATURE_BUDGET = dict(vae_steps=1500, decoder_steps=200, subject_vae_steps=3600, clips=6000, dit_steps=8000, batch_size=8)
