'''The ``bench new-plugin NAME --kind sampler`` template.

A sampler only makes sense against a family interface; the template targets the VP interface of
the built-in diffusion families (docs/diffusion.md, "Writing a sampler"), which any family
declaring ``provides=["vp"]`` offers. The core imports nothing from that plugin: this is text.
'''

SAMPLER_MODULE = '''"""A deterministic DDIM-style sampler (eta = 0) on the "trailing" time grid: a sampler example.

For the VP interface of bench_diffusion (docs/diffusion.md, "Writing a sampler"): at each time t,
x0_hat = (x - sigma_t sqrt(Sigma) eps_hat) / alpha_t and, at the next time s,
x_s = alpha_s x0_hat + sigma_s sqrt(Sigma) eps_hat  (Song et al. 2021, eq. 12 with eta = 0).
"""
from typing import Annotated

from pydantic import Field


class Midpoint:
    requires = frozenset({"vp"})

    def __init__(self, steps: Annotated[int, Field(gt=0, le=10000)] = 50):
        self.steps = steps

    def sample(self, family, rng):
        p = family.process
        times = p.sampling_times(self.steps, "trailing")
        x = p.prior_sample(rng, times[0])
        for i, t in enumerate(times):
            eps = family.eps(x, t)  # one network call per step: bench counts it as one NFE
            x0 = family.x0(x, t, eps)
            if i + 1 == len(times):
                return x0
            alpha_s, sigma_s = (float(v) for v in p.alpha_sigma(times[i + 1]))
            x = alpha_s * x0 + sigma_s * family.noise.sqrt(eps)

    def describe(self):
        return {"steps": self.steps, "spacing": "trailing", "eta": 0.0}
'''

SAMPLER_TEST = '''import numpy as np

from bench.context import BuildContext
from bench.rng import PerSampleRNG
from bench.store import Store


def test_sampler_reaches_gaussian_data_under_the_exact_score(registries, tmp_path):
    """On Gaussian data the built-in oracle family gives the exact score, so the samples must have
    the data's mean and covariance up to discretisation and Monte Carlo error."""
    store = Store(tmp_path)

    def build(kind, spec, ctx):
        return registries[kind].create(spec, context=ctx)

    data = registries.dataset.create({"name": "gaussian", "dim": 3}, context=BuildContext(None, 0, store, build))
    ctx = BuildContext(data.info, 0, store, build, dataset=data)
    family = registries.family.create({"name": "oracle_vp"}, context=ctx)
    sampler = registries.sampler.create({"name": "$component", "steps": 50}, context=ctx)
    x = sampler.sample(family, PerSampleRNG.for_indices(0, range(4000))).double().numpy()
    mean, cov = np.array(data.info.params["mean"]), np.array(data.info.params["cov"])
    assert np.abs(x.mean(0) - mean).max() < 0.1
    assert np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov) < 0.15
'''

SAMPLER_TEMPLATE = ("Midpoint", ', requires=["vp"]', SAMPLER_MODULE, SAMPLER_TEST)
