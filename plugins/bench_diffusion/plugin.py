"""bench_diffusion: noise models, schedules, diffusion families, samplers and an oracle
(docs/diffusion.md). Registration only: every target is a lazy ``"module:attr"`` string."""
from __future__ import annotations

from pathlib import Path

from bench.hookspecs import hookimpl

_P = "bench_diffusion"
_FAMILY_CAPS = ["diffusion", "eps", "score", "x0", "likelihood"]
_COMPONENTS = {"noise": "noise", "schedule": "schedule"}


@hookimpl
def bench_register_noise_models(register):
    shape = {"shape": "data.shape"}  # the sample shape comes from the dataset (bench.registry.Entry.from_context)
    register("isotropic", f"{_P}.noise:Isotropic", from_context=shape,
             description="Sigma = I (every operator the identity)")
    register("gff", f"{_P}.noise:GFF", from_context=shape,
             description="Gaussian free field: FFT filter |k|^-gamma, DC at |k|=dc, diag(Sigma)=1, per channel")
    register("anisotropic", f"{_P}.noise:anisotropic",
             description="dense covariance over the flattened sample (cov, or equicorrelation rho); eigh root")
    register("diagonal", f"{_P}.noise:diagonal", description="Sigma = diag(variances)")


@hookimpl
def bench_register_schedules(register):
    register("linear", f"{_P}.schedules:Linear", kind="vp", description="linear betas 1e-4..0.02 (VP)")
    register("cosine", f"{_P}.schedules:Cosine", kind="vp", description="cosine alpha_bar, s=0.008, clip 0.999 (VP)")
    register("quadratic", f"{_P}.schedules:Quadratic", kind="vp", description="quadratic betas (VP)")
    register("sigmoid", f"{_P}.schedules:Sigmoid", kind="vp", description="sigmoid betas (VP)")
    register("geometric", f"{_P}.schedules:Geometric", kind="ve",
             description="geometric sigmas (VE/SMLD); sigma_max='auto' from the data's max Sigma^-1 distance")
    register("karras", f"{_P}.schedules:Karras", kind="ve", description="Karras/EDM sigmas, rho=7 (VE)")


@hookimpl
def bench_register_families(register):
    vp, ve = _FAMILY_CAPS + ["vp", "discrete"], _FAMILY_CAPS + ["ve", "discrete"]
    register("ddpm", f"{_P}.families:ddpm", provides=vp, components=_COMPONENTS,
             description="DDPM (discrete VP, T steps; eps/x0/v prediction); NI-DDPM with a non-isotropic noise")
    register("ni_ddpm", f"{_P}.families:ni_ddpm", provides=vp, components=_COMPONENTS,
             description="NI-DDPM: ddpm with GFF noise by default (thesis 6.2)")
    register("smld", f"{_P}.families:smld", provides=ve, components=_COMPONENTS,
             description="SMLD (discrete VE, L geometric levels), noise-conditional or unconditional score net")
    register("ni_smld", f"{_P}.families:ni_smld", provides=ve, components=_COMPONENTS,
             description="NI-SMLD: smld with GFF noise by default (thesis 6.3)")
    register("vp_sde", f"{_P}.families:vp_sde", provides=_FAMILY_CAPS + ["vp", "continuous"],
             components=_COMPONENTS, description="VP SDE trained in continuous time")
    register("ve_sde", f"{_P}.families:ve_sde", provides=_FAMILY_CAPS + ["ve", "continuous"],
             components=_COMPONENTS, description="VE SDE trained in continuous time")
    register("mcvd", f"{_P}.mcvd:mcvd", components=_COMPONENTS, modalities=["video"],
             provides=["diffusion", "eps", "score", "x0", "vp", "discrete", "video", "video_predict"],
             description="MCVD: masked conditional video diffusion (thesis ch. 7), concat or spatin conditioning")
    oracle_caps = _FAMILY_CAPS + ["oracle", "discrete", "continuous"]
    register("oracle", f"{_P}.oracle:oracle", provides=oracle_caps + ["vp", "ve"], components=_COMPONENTS,
             trainable=False, description="exact score of Gaussian/GMM data under a VP or VE process (process=)")
    register("oracle_vp", f"{_P}.oracle:oracle", defaults={"process": "vp"}, provides=oracle_caps + ["vp"],
             components=_COMPONENTS, trainable=False, description="the oracle as a VP (ddpm-like) process")
    register("oracle_ve", f"{_P}.oracle:oracle", defaults={"process": "ve"}, provides=oracle_caps + ["ve"],
             components=_COMPONENTS, trainable=False, description="the oracle as a VE (smld-like) process")
    fm_caps = ["flow_matching", "velocity", "likelihood", "continuous"]
    register("flow_matching", f"{_P}.flow_matching:flow_matching", provides=fm_caps + ["linear"],
             components=_COMPONENTS, description="flow matching / rectified flow (linear or vp path, "
             "Sigma-shaped source noise, coupling independent|ot), velocity prediction")
    register("oracle_fm", f"{_P}.oracle:oracle_fm", provides=fm_caps + ["linear", "oracle"], components=_COMPONENTS,
             trainable=False, description="exact flow-matching velocity of Gaussian/GMM data (path linear|vp)")
    edm_caps = _FAMILY_CAPS + ["ve", "continuous", "edm"]
    register("edm", f"{_P}.edm:edm", provides=edm_caps, components=_COMPONENTS,
             description="EDM (Karras et al. 2022): preconditioned denoiser, log-normal sigmas, Sigma-shaped noise")
    register("oracle_edm", f"{_P}.oracle:oracle_edm", provides=edm_caps + ["oracle"], components=_COMPONENTS,
             trainable=False, description="exact EDM denoiser of Gaussian/GMM data on the sigma process")
    register("diffusers", f"{_P}.pretrained:diffusers_family", provides=_FAMILY_CAPS + ["vp", "discrete"],
             trainable=False, description="a pretrained diffusers UNet2DModel (local save_pretrained directory), frozen")


@hookimpl
def bench_register_samplers(register):
    s = f"{_P}.samplers"
    register("ancestral", f"{s}.discrete:Ancestral", requires=["vp"],
             description="DDPM ancestral sampling, posterior variance beta-tilde or beta, respaced")
    register("ddim", f"{s}.discrete:DDIM", requires=["vp"], description="DDIM with eta, respaced")
    register("ald", f"{s}.langevin:ALD", requires=["ve", "score"],
             description="annealed Langevin dynamics, Sigma-preconditioned (E11)")
    register("cas", f"{s}.langevin:CAS", requires=["ve", "score"],
             description="consistent annealed sampling, Sigma-preconditioned")
    register("euler_maruyama", f"{s}.sde:EulerMaruyama", requires=["score"],
             description="Euler-Maruyama on the reverse SDE")
    register("pc", f"{s}.sde:PredictorCorrector", requires=["score"],
             description="predictor-corrector: Langevin corrector (snr) + Euler-Maruyama predictor")
    register("pf_ode", f"{s}.sde:PFODE", requires=["score"],
             description="probability-flow ODE via torchdiffeq (euler, midpoint, rk4, dopri5, bosh3, ...)")
    register("dpmpp_2m", f"{s}.multistep:DPMSolverPP2M", requires=["vp"],
             description="DPM-Solver++(2M), data prediction in log-SNR, NFE = steps")
    register("dpmpp_3m_sde", f"{s}.multistep:DPMSolverPP3MSDE", requires=["vp"],
             description="DPM-Solver++(3M) SDE (eta: 0 = ODE, 1 = reverse SDE), NFE = steps")
    register("unipc", f"{s}.multistep:UniPC", requires=["vp"],
             description="UniPC predictor-corrector (bh2 / bh1, order 1-3), NFE = steps")
    register("deis", f"{s}.multistep:DEIS", requires=["vp"],
             description="DEIS tAB multistep in log rho (order 1-3), NFE = steps")
    register("euler", f"{s}.flow:Euler", requires=["velocity"],
             description="flow ODE, forward Euler, NFE = steps")
    register("heun", f"{s}.flow:Heun", requires=["velocity"], description="flow ODE, Heun (2nd order), NFE = 2 steps")
    register("midpoint", f"{s}.flow:Midpoint", requires=["velocity"],
             description="flow ODE, explicit midpoint (2nd order), NFE = 2 steps")
    register("dopri5", f"{s}.flow:AdaptiveFlowODE", requires=["velocity"],
             description="flow ODE, adaptive (method dopri5|bosh3|...; atol, rtol), NFE measured")
    register("edm_heun", f"{s}.edm:EDMHeun", requires=["edm"],
             description="EDM Algorithm 2 (Heun, S_churn/S_tmin/S_tmax/S_noise), NFE = 2 steps - 1")
    register("edm_euler", f"{s}.edm:EDMEuler", requires=["edm"],
             description="EDM Algorithm 2 without the Heun correction, NFE = steps")
    register("diffusers", f"{s}.diffusers_bridge:DiffusersScheduler", requires=["vp"],
             description="any diffusers scheduler (DPMSolverMultistep, UniPC, Euler, Heun, DEIS, ...) on a VP family")


@hookimpl
def bench_new_plugin_templates():
    """``bench new-plugin --kind sampler``: a DDIM-style sampler written against the VP family interface."""
    return Path(__file__).with_name("templates")


@hookimpl
def bench_register_datasets(register):
    register("gaussian_image", f"{_P}.data:GaussianImage", modality="image",
             description="an image-shaped Gaussian (C, n, n) with known mean and covariance (oracle under GFF)")
