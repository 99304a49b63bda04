"""The diffusers schedulers the ``diffusers`` sampler accepts, and the suite parameter type that checks a
name against them. Free of torch and diffusers, so that ``bench validate`` checks a name without
importing either (:mod:`bench.signatures`); the bridge itself is :mod:`bench_diffusion.samplers.diffusers_bridge`.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from bench.errors import did_you_mean

#: diffusers schedulers that take (trained_betas, num_train_timesteps, prediction_type) and step a
#: noise-prediction model (not: DPMSolverSDEScheduler, which needs torchsde; LCM/TCD, which are for
#: distilled consistency models; EDM/flow-matching schedulers, which have no betas). Names are checked
#: against this tuple before diffusers is imported, and only these are ever looked up in diffusers.
SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler", "PNDMScheduler", "SASolverScheduler", "UniPCMultistepScheduler",
)
def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        close = did_you_mean(name, SCHEDULERS)
        hint = f"did you mean '{close}'?" if close else f"known: {', '.join(SCHEDULERS)}"
        raise ValueError(f"unknown diffusers scheduler '{name}' ({hint})")
    return name


SchedulerName = Annotated[str, AfterValidator(check_scheduler)]
