"""The official flow-matching UniPC and DPM++ schedulers, as diffusers schedulers.

The solver steps of diffusers' UniPCMultistepScheduler and DPMSolverMultistepScheduler (with
flow sigmas and flow_prediction) are the official ones; only the sigma grid differs, which moves
timesteps by up to 3 against the official code:
- official UniPC: linspace(1 - 1/1000, 0, steps + 1)[:-1], then shifted;
- official DPM++ (`get_sampling_sigmas`): linspace(1, 0, steps + 1)[:-1], then shifted;
- diffusers: linspace(1, 1/1000, steps + 1)[:-1] (UniPC) and a flipped variant (DPM++).
No configuration flag selects these grids, so each subclass overrides `set_timesteps` only to
install the official sigmas; everything else is diffusers' code.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SchedulerMixin, UniPCMultistepScheduler

# diffusers loads a saved component ["magref.schedulers", name] by looking up its base classes
# (SchedulerMixin, ...) as attributes of this module, so SchedulerMixin must be importable here.
__all__ = ["FlowUniPCScheduler", "FlowDPMSolverScheduler", "FlowEulerScheduler", "SchedulerMixin", "make_scheduler"]

_FLOW_DEFAULTS = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000)


def official_sigmas(solver: str, num_inference_steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
    """Shifted sigmas of the official sampler (without the final 0), float64."""
    start = 1.0 - 1.0 / num_train_timesteps if solver == "unipc" else 1.0
    sigmas = np.linspace(start, 0.0, num_inference_steps + 1)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _install(scheduler, solver: str, num_inference_steps: int, device) -> None:
    sigmas = official_sigmas(solver, num_inference_steps, scheduler.config.flow_shift, scheduler.config.num_train_timesteps)
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    # Truncation to int64, as the official `torch.from_numpy(timesteps).to(torch.int64)`.
    scheduler.timesteps = torch.from_numpy(sigmas * scheduler.config.num_train_timesteps).to(device=device, dtype=torch.int64)
    scheduler.num_inference_steps = num_inference_steps


class FlowUniPCScheduler(UniPCMultistepScheduler):
    """diffusers UniPC with the official MAGREF/Wan sigma grid (`shift` = flow_shift)."""

    def __init__(self, flow_shift: float = 3.0, **kwargs):
        super().__init__(**{**_FLOW_DEFAULTS, **kwargs, "flow_shift": flow_shift})

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None):
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
        if sigmas is None:
            _install(self, "unipc", num_inference_steps, device)


class FlowDPMSolverScheduler(DPMSolverMultistepScheduler):
    """diffusers DPM++ (2M, dpmsolver++) with the official sigma grid, which starts at 1.0."""

    def __init__(self, flow_shift: float = 3.0, **kwargs):
        super().__init__(**{**_FLOW_DEFAULTS, **kwargs, "flow_shift": flow_shift})

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu=None, timesteps=None):
        super().set_timesteps(num_inference_steps, device=device, mu=mu, timesteps=timesteps)
        if timesteps is None:
            _install(self, "dpm++", num_inference_steps, device)


class FlowEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """First-order flow-matching Euler (x += (sigma_next - sigma) v) on the DPM++ grid shifted by
    `flow_shift`: the sampler step-distilled Wan LoRAs are run with (few steps, guidance 1; the
    `turbo` preset). Not an official MAGREF solver."""

    def __init__(self, flow_shift: float = 5.0, **kwargs):
        super().__init__(**{"num_train_timesteps": 1000, **kwargs, "shift": 1.0})  # the grid is shifted in set_timesteps
        self.register_to_config(flow_shift=flow_shift)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is not None or timesteps is not None:
            return super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)
        grid = official_sigmas("dpm++", num_inference_steps, self.config.flow_shift, self.config.num_train_timesteps)
        self.sigmas = torch.from_numpy(np.concatenate([grid, [0.0]]).astype(np.float32)).to(device)
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index, self._begin_index = None, None


SOLVERS = {"unipc": FlowUniPCScheduler, "dpm++": FlowDPMSolverScheduler, "euler": FlowEulerScheduler}


def make_scheduler(solver: str = "unipc", shift: float = 3.0):
    if solver not in SOLVERS:
        from .errors import MagrefInputError

        raise MagrefInputError(f"Unknown solver {solver!r}.", f"use one of {', '.join(SOLVERS)}.")
    return SOLVERS[solver](flow_shift=shift)


def solver_name(scheduler) -> str:
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return "euler"
    return "dpm++" if isinstance(scheduler, DPMSolverMultistepScheduler) else "unipc"
