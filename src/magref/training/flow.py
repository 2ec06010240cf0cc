"""Flow matching as Wan trains it (rectified flow): noise levels, the noisy input and its velocity
target, and the losses, optionally weighted where the subjects are."""

from __future__ import annotations

import numpy as np
import torch

from .config import TrainConfig


def sample_sigmas(n: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if cfg.sigma_sampling == "logit_normal":
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    u = torch.rand(n, generator=generator)
    return cfg.shift * u / (1 + (cfg.shift - 1) * u)  # the sampler's shift, applied to uniform draws


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """x_t = (1 - s) x0 + s e; the velocity target is e - x0; the timestep is 1000 s."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, noise - x0, sigma * 1000


def latent_subject_mask(masks: np.ndarray, t_stride: int = 4, s_stride: int = 8) -> torch.Tensor:
    """(F, H, W) pixel masks -> (1 + (F-1)/t_stride, H/s_stride, W/s_stride) float {0, 1}: a
    latent cell is marked when any pixel it codes is. The causal VAE codes frame 0 alone and then
    t_stride frames per latent frame, so the temporal groups are [0], [1..4], [5..8], ..."""
    m = torch.from_numpy(np.asarray(masks)).float()
    groups = torch.cat([m[:1], m[1:].unflatten(0, (-1, t_stride)).amax(1)])  # (F_lat, H, W)
    return torch.nn.functional.max_pool2d(groups[:, None], s_stride)[:, 0]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of `values` with `weight` broadcast over them (e.g. one weight per cell shared by
    the channels), normalised by the weights' sum so that it keeps the plain mean's scale."""
    return (values * weight).sum() / weight.expand_as(values).sum()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE with a per-cell weight (B, F, h, w) shared by the channels."""
    if weight is None:
        return torch.nn.functional.mse_loss(pred, target)
    return weighted_mean((pred - target) ** 2, weight[:, None])
