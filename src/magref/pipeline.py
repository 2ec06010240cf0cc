"""MagrefPipeline: text + reference images (1-8 on the official grids) -> video, on diffusers' Wan image-to-video.

MAGREF is Wan2.1 I2V with two changes, and this class overrides exactly those:
- the conditioning image is the composed reference canvas (`compose_references`), whose CLIP
  features are computed with the official tensor preprocessing (`encode_image`);
- the first-frame mask of ones becomes the region mask (`prepare_condition`).
Prompt encoding (UMT5, zero-padded to 512 tokens), LoRA loading, offload hooks and callbacks are
inherited from `WanImageToVideoPipeline`. The denoising loop is written here because the parent
keeps its loop inside `__call__`; it is the official loop (two CFG passes, official schedulers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor
from diffusers.video_processor import VideoProcessor
from PIL import Image
from transformers import CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel

from .context_windows import ContextWindows, windowed_velocity
from .composition import Composition, RegionLayout, check_canvas_size, compose_references, grid_size_for
from .conditioning import (
    CLIP_MEAN,
    CLIP_STD,
    canvas_to_tensor,
    check_num_frames,
    clip_pixel_values,
    condition_video,
    model_input,
    model_output,
    num_latent_frames,
    reference_mask,
)
from .defaults import DEFAULTS, DROP_FIRST_FRAMES, MAGREF_NEGATIVE_PROMPT
from .errors import MagrefInputError
from .schedulers import make_scheduler, solver_name



@dataclass
class MagrefPipelineOutput(BaseOutput):
    frames: Any  # np.ndarray (B, F, H, W, 3) in [0, 1], list of PIL, or latents / tensor
    composition: Composition | None = None


class MagrefPipeline(WanImageToVideoPipeline):
    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components = ["image_processor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan,
        scheduler,
        image_encoder: CLIPVisionModel,
        transformer: WanTransformer3DModel,
        image_processor=None,  # CLIP image processor: its size, mean and std drive encode_image
        conditioning: str = "channel",  # "tokens": the Phantom-style ablation (see conditioning.model_input)
        mask_channels: bool = True,  # False: the no-mask ablation
        text_len: int = 512,  # UMT5 embeddings zero-padded to this length, in training and inference alike
    ):
        # Skip WanImageToVideoPipeline.__init__: it registers Wan2.2's second transformer and
        # boundary config, which MAGREF does not have and which would leak into model_index.json.
        DiffusionPipeline.__init__(self)
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            image_encoder=image_encoder,
            transformer=transformer,
            image_processor=image_processor,
        )
        # Wan's cross-attention has no padding mask: the zero-padded length changes the attention,
        # so a model must be sampled with the length it was trained with (official: 512).
        self.register_to_config(conditioning=conditioning, mask_channels=mask_channels, text_len=text_len)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal if vae is not None else 4
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial if vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self.batched_cfg = False  # one forward for both guidance branches (see acceleration.py)
        self._interrupt = False
        self._current_timestep = None
        self._guidance_scale = 1.0
        self._attention_kwargs = None

    # The parent reads these from its config; MAGREF is always single-stage Wan2.1.
    @property
    def transformer_2(self):
        return None

    # ------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------
    # Named apart from the parent's check_inputs / prepare_latents: MAGREF's inputs (references or a
    # composition, no image) and noise (no image latents) do not fit those signatures.
    def check_magref_inputs(self, prompt, references, height, width, num_frames, layout, prompt_embeds=None, drop_first_frames=0, composition=None):
        if prompt is None and prompt_embeds is None:
            raise MagrefInputError("No prompt was given.", "pass a text prompt.")
        if prompt is not None and not isinstance(prompt, str):
            raise MagrefInputError("The prompt must be one string.", "generate one video per call (or use `magref batch`).")
        check_canvas_size(height, width, *self.spatial_geometry())
        check_num_frames(num_frames)
        if composition is not None:  # composed by the caller (a request): only what ties it to this call and model
            if references is not None or layout is not None:
                raise MagrefInputError("Both a composition and references (or a layout) were given.", "pass one: the composition, or the references.")
            if composition.canvas.size != (width, height) or composition.spatial_stride != self.spatial_geometry()[0]:
                raise MagrefInputError(
                    f"The composition is a {composition.canvas.width}x{composition.canvas.height} canvas in {composition.spatial_stride}-pixel "
                    f"latent cells; this call is {width}x{height} for a model with {self.spatial_geometry()[0]}-pixel cells.",
                    "compose with this call's height and width and the model's spatial_geometry().",
                )
        elif not references:
            raise MagrefInputError("No reference image was given.", "pass 1 to 16 reference images (1 to 8 on the official grids).")
        elif layout is None:
            grid_size_for(len(references))  # more than the grids hold: one clear line
        if drop_first_frames < 0 or drop_first_frames >= num_frames:
            raise MagrefInputError(
                f"Dropping the first {drop_first_frames} decoded frames of a {num_frames}-frame video leaves no frame.",
                "generate at least 5 frames, or keep the first frames (drop_first_frames=0, CLI --keep-first-frames).",
            )

    def spatial_geometry(self) -> tuple[int, int]:
        """(VAE spatial stride, transformer patch): pixels per latent cell and latent cells per
        token side; the canvas size must be a multiple of their product."""
        patch = self.transformer.config.patch_size[1] if self.transformer is not None else 2
        return int(self.vae_scale_factor_spatial), int(patch)

    # ------------------------------------------------------------------------------------------
    # Conditioning
    # ------------------------------------------------------------------------------------------
    def clip_input_size(self) -> tuple[int, int]:
        if self.image_processor is not None and getattr(self.image_processor, "crop_size", None):
            cs = self.image_processor.crop_size
            return int(cs["height"]), int(cs["width"])
        size = self.image_encoder.config.image_size
        return int(size), int(size)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """CLIP features of the composed canvas, `image` (B, 3, H, W) in [-1, 1] (the parent's
        signature; MAGREF passes the canvas tensor): penultimate block, no post norm."""
        device = device or self._execution_device
        proc = self.image_processor
        mean = proc.image_mean if proc is not None else CLIP_MEAN
        std = proc.image_std if proc is not None else CLIP_STD
        pixel_values = clip_pixel_values(image, self.clip_input_size(), mean, std)
        encoder_device = get_module_execution_device(self.image_encoder)  # offload hooks aware
        pixel_values = pixel_values.to(encoder_device, self.image_encoder.dtype)
        hidden = self.image_encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
        return hidden.to(device)

    @torch.no_grad()
    def prepare_condition(self, canvas: torch.Tensor, latent_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """y = [reference mask (4); normalised VAE latent of canvas + F-1 black frames (16)]."""
        latent = self.encode_video(condition_video(canvas, num_frames))
        mask = reference_mask(latent_mask.to(latent.device), num_frames).to(latent.dtype)
        return torch.cat([mask.expand(latent.shape[0], -1, -1, -1, -1), latent], dim=1)

    def prepare_noise(self, batch_size, height, width, num_frames, device, generator=None, latents=None):
        shape = (
            batch_size,
            self.vae.config.z_dim,
            num_latent_frames(num_frames),
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        if latents is not None:
            return latents.to(device=device, dtype=torch.float32)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def _latent_stats(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, shaped (1, C, 1, 1, 1)."""
        mean = torch.tensor(self.vae.config.latents_mean, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised float32 latent (the posterior mode, as the
        official VAE returns); shared by the condition and the trainer's targets."""
        vae_device = get_module_execution_device(self.vae)
        latent = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(latent.device, latent.dtype)
        return (latent - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae_device = get_module_execution_device(self.vae)
        latents = latents.to(vae_device, self.vae.dtype)
        mean, std = self._latent_stats(vae_device, latents.dtype)
        return self.vae.decode(latents * std + mean, return_dict=False)[0]

    def scheduler_for(self, solver: str | None, shift: float | None):
        """The scheduler for this call; a fresh copy when solver or shift differ from the component's."""
        current = solver_name(self.scheduler)
        if (solver is None or solver == current) and (shift is None or shift == self.scheduler.config.flow_shift):
            return self.scheduler
        return make_scheduler(solver or current, self.scheduler.config.flow_shift if shift is None else shift)

    def conditioned_velocity(self, latents, condition, timestep, text_embeds, image_embeds, attention_kwargs=None,
                             cache_context: str = "cond") -> torch.Tensor:
        """The transformer's velocity for the video latent (B, z, T, h, w), float32: the input is
        [noisy latent; condition] as the model's conditioning mode says (channel concatenation, or
        the tokens ablation's extra frame, dropped again from the output). One forward for sampling
        and training alike; `cache_context` keeps step-cache state apart per guidance branch."""
        mode, mask_channels = self.config.get("conditioning", "channel"), self.config.get("mask_channels", True)
        x_in = model_input(latents, condition, mode, mask_channels).to(self.transformer.dtype)  # (B, 36, T, h, w) in channel mode
        with self.transformer.cache_context(cache_context):
            out = self.transformer(
                hidden_states=x_in,
                timestep=timestep,
                encoder_hidden_states=text_embeds,
                encoder_hidden_states_image=image_embeds,
                attention_kwargs=attention_kwargs,
                return_dict=False,
            )[0]
        return model_output(out, mode).float()

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,  # (B, 16, T, h, w) float32 noise
        condition: torch.Tensor,  # (B, 20, T, h, w): reference mask (4) + reference latent (16)
        prompt_embeds: torch.Tensor,  # (B, L, text_dim)
        negative_prompt_embeds: torch.Tensor | None,  # None: no guidance
        image_embeds: torch.Tensor,  # (B, N, clip_dim)
        scheduler,  # with timesteps already set
        guidance_scale: float = DEFAULTS["guidance_scale"],
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        batched_cfg: bool | None = None,
        context_windows: ContextWindows | None = None,
    ) -> torch.Tensor:
        """The official sampling loop: a conditional and an unconditional pass per step,
        noise_pred = uncond + scale * (cond - uncond), then one scheduler step in float32. Its
        frame follows diffusers' WanImageToVideoPipeline.__call__ loop (interrupt, current
        timestep, callback_on_step_end with the same tensor inputs, progress bar).
        With `batched_cfg` both branches run as one batch-2 forward (same result, fewer launches);
        with `context_windows` each velocity is blended from windows of the trained length."""
        batched_cfg = self.batched_cfg if batched_cfg is None else batched_cfg
        timesteps = scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                def velocity(lat, cond, text, image, cache_context):
                    def forward(window_lat, window_cond):
                        return self.conditioned_velocity(window_lat, window_cond, t.expand(window_lat.shape[0]), text, image, attention_kwargs, cache_context)

                    return forward(lat, cond) if context_windows is None else windowed_velocity(forward, lat, cond, context_windows)

                if negative_prompt_embeds is not None and batched_cfg:
                    both = velocity(torch.cat([latents, latents]), torch.cat([condition, condition]), torch.cat([prompt_embeds, negative_prompt_embeds]),
                                    torch.cat([image_embeds, image_embeds]), "cfg")
                    noise_pred, noise_uncond = both.chunk(2)
                else:
                    noise_pred = velocity(latents, condition, prompt_embeds, image_embeds, "cond")
                    if negative_prompt_embeds is not None:
                        noise_uncond = velocity(latents, condition, negative_prompt_embeds, image_embeds, "uncond")
                if negative_prompt_embeds is not None:
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        self._current_timestep = None
        return latents

    # ------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        references: Sequence[Image.Image] | None = None,
        negative_prompt: str | None = None,
        height: int = DEFAULTS["height"],
        width: int = DEFAULTS["width"],
        num_frames: int = DEFAULTS["num_frames"],
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        shift: float | None = None,
        solver: str | None = None,
        layout: RegionLayout | dict | str | None = None,
        layout_seed: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        drop_first_frames: int = DROP_FIRST_FRAMES,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int | None = None,  # default: the model's text_len
        batched_cfg: bool | None = None,
        composition: Composition | None = None,
        context_windows: ContextWindows | None = None,
    ):
        # 1. Check inputs
        self.check_magref_inputs(prompt, references, height, width, num_frames, layout, prompt_embeds, drop_first_frames, composition)
        max_sequence_length = max_sequence_length or self.config.text_len
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        do_cfg = guidance_scale > 1.0

        # 2. Encode prompt and negative prompt (UMT5, zero-padded to max_sequence_length)
        if negative_prompt is None and negative_prompt_embeds is None:
            negative_prompt = MAGREF_NEGATIVE_PROMPT
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=1,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        # 3. Compose the references into one canvas with its region mask (unless the caller has)
        if composition is None:
            stride, patch = self.spatial_geometry()
            composition = compose_references(references, height, width, layout=layout, layout_seed=layout_seed, spatial_stride=stride, patch_size=patch)
        canvas = canvas_to_tensor(composition.canvas).to(device)  # (1, 3, H, W) in [-1, 1]

        # 4. Encode the condition: CLIP features and y = [mask; VAE latent] (20 channels)
        image_embeds = self.encode_image(canvas, device).to(dtype)
        latent_mask = torch.from_numpy(composition.latent_mask)
        condition = self.prepare_condition(canvas, latent_mask, num_frames).to(device)

        # 5. Noise and timesteps
        latents = self.prepare_noise(1, height, width, num_frames, device, generator, latents)
        scheduler = self.scheduler_for(solver, shift)
        scheduler.set_timesteps(num_inference_steps, device=device)

        # 6. Denoise with classifier-free guidance
        latents = self.denoise(
            latents,
            condition,
            prompt_embeds,
            negative_prompt_embeds if do_cfg else None,
            image_embeds,
            scheduler,
            guidance_scale,
            attention_kwargs,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            batched_cfg,
            context_windows,
        )
        # 7. Decode and drop the frames that reproduce the canvas
        if output_type == "latent":
            video = latents
        else:
            video = self.decode_latents(latents)  # (1, 3, F, H, W), about [-1, 1]
            if drop_first_frames:
                video = video[:, :, drop_first_frames:]
            video = self.video_processor.postprocess_video(video, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (video, composition)
        return MagrefPipelineOutput(frames=video, composition=composition)


def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) float [0, 1] -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
