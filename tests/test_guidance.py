"""Class-conditional families and classifier-free guidance (bench_diffusion.guidance), checked on the
exact class-conditional GMM oracles: conditioning on component k is the exact eps of N(m_k, S_k),
the null class is the mixture, so the guided eps has the closed form (1 + w) eps_k - w eps_mix."""
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from bench.plugins import get_manager
from bench.rng import PerSampleRNG
from bench_diffusion.testing import build, count_network_calls, dataset

W = [0.0, 0.5, 2.0]


@pytest.fixture(scope="module")
def gmm():
    return dataset("gmm", dim=3, components=4, n_train=50, n_test=50)


def closed_form_eps(x, alpha, sigma, weights, means, covs, var, label):
    """E[eps | x_t] for x_t = alpha x0 + sigma sqrt(Sigma) eps with Sigma = diag(var), x0 from
    component ``label`` (None: the mixture), by the Gaussian formulas in float64 (scipy densities):
    per component E[eps | x, k] = sigma sqrt(Sigma) (alpha^2 S_k + sigma^2 Sigma)^-1 (x - alpha m_k)."""
    x = np.asarray(x, np.float64)
    root, sig = np.sqrt(var), np.diag(var)
    parts, dens = [], []
    for w, m, c in zip(weights, means, covs):
        cov_t = alpha ** 2 * np.asarray(c) + sigma ** 2 * sig
        parts.append(sigma * root * np.linalg.solve(cov_t, (x - alpha * np.asarray(m)).T).T)
        dens.append(w * multivariate_normal(alpha * np.asarray(m), cov_t).pdf(x))
    if label is not None:
        return np.stack([parts[k][i] for i, k in enumerate(label)])
    r = np.stack(dens, 1)
    r = r / r.sum(1, keepdims=True)
    return sum(r[:, k:k + 1] * parts[k] for k in range(len(parts)))


def _points(n=16, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * 1.5


@pytest.mark.parametrize("noise", ["isotropic", {"name": "diagonal", "variances": [0.5, 1.0, 2.0]}])
@pytest.mark.parametrize("w", W)
def test_guided_eps_of_the_vp_oracle_is_the_closed_form(gmm, noise, w):
    fam = build("family", {"name": "oracle_vp", "class_conditional": True, "noise": noise, "T": None}, gmm)
    var = np.ones(3) if noise == "isotropic" else np.array(noise["variances"])
    wts, means, covs = fam.mixture
    x, labels = _points(), torch.arange(16) % 4
    for t in (0.1, 0.5, 0.9):
        a, s = fam.process.alpha_sigma_floats(t)
        with fam.conditioned(labels, w):
            got = fam.eps(x, t).double().numpy()
        cond = closed_form_eps(x, a, s, wts, means, covs, var, labels.tolist())
        mix = closed_form_eps(x, a, s, wts, means, covs, var, None)
        np.testing.assert_allclose(got, (1 + w) * cond - w * mix, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("w", W)
def test_velocity_and_denoiser_guidance_give_the_same_guided_eps(gmm, w):
    """Guidance applied to the flow-matching velocity (vp path) and to EDM's denoiser equals eq. 6 on eps."""
    wts, means, covs = [np.asarray(v) for v in build("family", {"name": "oracle_vp"}, gmm).mixture]
    x, labels = _points(seed=1), torch.arange(16) % 4
    fm = build("family", {"name": "oracle_fm", "path": "vp", "class_conditional": True}, gmm)
    edm = build("family", {"name": "oracle_edm", "class_conditional": True}, gmm)
    for fam in (fm, edm):
        for t in (0.2, 0.6):
            a, s = fam.process.alpha_sigma_floats(t)
            with fam.conditioned(labels, w):
                got = fam.eps(x, t).double().numpy()
            want = ((1 + w) * closed_form_eps(x, a, s, wts, means, covs, np.ones(3), labels.tolist())
                    - w * closed_form_eps(x, a, s, wts, means, covs, np.ones(3), None))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_w0_sampling_is_exactly_the_oracle_of_the_conditioned_component(gmm):
    """ddim with guidance 0 on the conditional oracle = ddim on the oracle of the single Gaussian N(m_k, S_k)."""
    fam = build("family", {"name": "oracle_vp", "class_conditional": True}, gmm)
    wts, means, covs = fam.mixture
    k = 2
    single = dataset("gaussian", dim=3, n_train=10, n_test=10)
    single.info.params.update({"kind": "gaussian", "mean": list(means[k]), "cov": np.asarray(covs[k]).tolist()})
    ref = build("family", {"name": "oracle_vp"}, single)
    idx = [4 * i + k for i in range(50)]  # sample i gets class i mod 4: these all get class k
    smp = build("sampler", {"name": "ddim", "steps": 25}, gmm)
    got = smp.sample(fam, PerSampleRNG.for_indices(3, idx))
    want = build("sampler", {"name": "ddim", "steps": 25}, gmm).sample(ref, PerSampleRNG.for_indices(3, idx))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert smp.requested_labels(8).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_nfe_counts_the_unconditional_call_inside_the_interval_only(gmm):
    fam = build("family", {"name": "oracle_vp", "class_conditional": True, "T": None}, gmm)
    rng = lambda: PerSampleRNG.for_indices(0, range(8))  # noqa: E731
    counts = {}
    for spec in ({}, {"guidance": 1.5}, {"guidance": 1.5, "guidance_interval": [0.0, 0.5]}):
        smp = build("sampler", {"name": "euler_maruyama", "steps": 20, "denoise": False, **spec}, gmm)
        counts[len(spec)] = count_network_calls(fam, lambda: smp.sample(fam, rng()))[0]
    ts = fam.process.ode_times(20)[:20]
    inside = sum(1 for t in ts if t <= 0.5)
    assert counts == {0: 20, 1: 40, 2: 20 + inside} and 0 < inside < 20


def test_guidance_outside_the_interval_is_the_conditional_output(gmm):
    fam = build("family", {"name": "oracle_vp", "class_conditional": True, "T": None}, gmm)
    x, labels = _points(seed=2), torch.arange(16) % 4
    with fam.conditioned(labels):
        plain = fam.eps(x, 0.8)
    with fam.conditioned(labels, 3.0, (0.1, 0.5)):
        assert torch.equal(fam.eps(x, 0.8), plain)
        assert not torch.allclose(fam.eps(x, 0.3), plain)


def test_samples_and_labels_do_not_depend_on_the_batch_size(gmm):
    fam = build("family", {"name": "oracle_vp", "class_conditional": True}, gmm)
    smp = build("sampler", {"name": "ddim", "steps": 10, "guidance": 1.0}, gmm)
    whole = smp.sample(fam, PerSampleRNG.for_indices(5, range(12)))
    parts = torch.cat([smp.sample(fam, PerSampleRNG.for_indices(5, range(lo, lo + 5))) for lo in (0, 5)]
                      + [smp.sample(fam, PerSampleRNG.for_indices(5, range(10, 12)))])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)


def test_guidance_on_an_unconditional_family_is_an_error(gmm):
    fam = build("family", {"name": "oracle_vp"}, gmm)
    smp = build("sampler", {"name": "ddim", "steps": 5, "guidance": 1.0}, gmm)
    with pytest.raises(ValueError, match="class-conditional"):
        smp.sample(fam, PerSampleRNG.for_indices(0, range(4)))


def test_new_parameters_leave_existing_specs_unchanged_and_are_validated():
    regs = get_manager().registries
    for kind, name in (("family", "ddpm"), ("family", "edm"), ("family", "flow_matching"), ("sampler", "ddim"),
                       ("sampler", "edm_heun"), ("sampler", "euler")):
        spec = regs[kind].resolve(name, {})
        assert not {"class_conditional", "label_dropout", "guidance", "guidance_interval"} & set(spec), spec
    assert regs.sampler.resolve("ddim", {"guidance": 2})["guidance"] == 2.0
    with pytest.raises(Exception, match="guidance_interval"):
        regs.sampler.validate("ddim", {"guidance_interval": [0.6, 0.2]})
    with pytest.raises(Exception):
        regs.family.validate("ddpm", {"label_dropout": 1.0})


class _Spy(torch.nn.Module):
    """A network that records the labels it gets (None: the null class) and returns zeros."""

    def __init__(self, in_shape, num_classes=None):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, cond=None, y=None):
        self.seen.append(None if y is None else y.clone())
        return x * 0 + self.p


def test_label_dropout_trains_the_null_class_at_its_rate():
    from bench.testing import ProbeDataset  # labelled probe data (labels i mod 2)

    data = ProbeDataset("points", n=64)
    data.info.params["num_classes"] = 2
    fam = build("family", {"name": "ddpm", "class_conditional": True, "label_dropout": 0.3, "network": "spy"},
                data, networks={"spy": _Spy})
    assert fam.num_classes == 2 and fam.wants_labels
    x, y = data.split("train"), data.labels("train")
    from bench.rng import BatchRNG

    null = total = 0
    for seed in range(40):
        fam.net.seen.clear()
        fam.loss(x, BatchRNG(seed, len(x)), labels=y)
        got = fam.net.seen[0]
        kept = got != 2
        assert torch.equal(got[kept], y[kept])
        null += int((~kept).sum())
        total += len(got)
    rate = null / total
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / total) ** 0.5, rate
    with pytest.raises(ValueError, match="labels"):
        fam.loss(x, BatchRNG(0, len(x)))


def test_the_trainer_passes_each_row_with_its_label():
    from bench import trainer
    from bench.testing import ProbeDataset

    data = ProbeDataset("points", n=64)
    data.info.params["num_classes"] = 2
    fam = build("family", {"name": "ddpm", "class_conditional": True, "label_dropout": 0.0, "network": "spy"},
                data, networks={"spy": _Spy})
    rows = {tuple(r.tolist()): int(k) for r, k in zip(data.split("train"), data.labels("train"))}
    batches = []
    original = fam.denoising_loss

    def spy_loss(x0, rng):
        batches.append((x0.clone(), fam.condition.labels.clone()))
        return original(x0, rng)

    fam.denoising_loss = spy_loss
    cfg = {"lr": 1e-3, "weight_decay": 0.0, "ema": 0.0, "batch_size": 16, "steps": 3, "log_every": 1,
           "warmup": 0, "grad_clip": 0.0}
    trainer.train(fam, data, cfg, 0, lambda it, **k: it, lambda what: None)
    assert len(batches) == 3
    for xb, yb in batches:
        assert [rows[tuple(r.tolist())] for r in xb] == yb.tolist()


@pytest.mark.parametrize("net", [{"name": "mlp", "hidden": 16}, {"name": "unet", "base": 8}])
def test_conditional_networks_use_the_label(net):
    data = dataset("digits8") if net["name"] == "unet" else None
    if data is None:
        from bench.testing import ProbeDataset

        data = ProbeDataset("points", n=64)
        data.info.params["num_classes"] = 2
    fam = build("family", {"name": "ddpm", "class_conditional": True, "network": net}, data)
    k = fam.num_classes
    with torch.no_grad():
        for p in fam.net.parameters():  # away from the zero-initialised output layer
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x = data.split("train")[:4]
        outs = []
        for y in (torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long), None):
            with fam.conditioned(y):
                outs.append(fam.eps(x, 0.5))
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    assert fam.net.label.num_classes == k


ORACLE_FOR = {"vp": {"name": "oracle_vp", "T": None}, "ve": {"name": "oracle_ve", "T": None},
              "velocity": {"name": "oracle_fm"}, "edm": {"name": "oracle_edm"}}
SAMPLERS = [("ancestral", "vp", {"steps": 6}), ("ddim", "vp", {"steps": 6}), ("dpmpp_2m", "vp", {"steps": 6}),
            ("dpmpp_3m_sde", "vp", {"steps": 6}), ("unipc", "vp", {"steps": 6}), ("deis", "vp", {"steps": 6}),
            ("euler_maruyama", "vp", {"steps": 6}), ("pc", "vp", {"steps": 6}),
            ("pf_ode", "vp", {"method": "rk4", "steps": 3}), ("ald", "ve", {"steps": 4, "n_steps_each": 2}),
            ("cas", "ve", {"steps": 6}), ("euler", "velocity", {"steps": 6}), ("heun", "velocity", {"steps": 3}),
            ("midpoint", "velocity", {"steps": 3}), ("edm_heun", "edm", {"steps": 4}),
            ("edm_euler", "edm", {"steps": 6})]


@pytest.mark.parametrize("name,kind,params", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_every_sampler_is_guided_with_two_calls_per_evaluation(gmm, name, kind, params):
    fam = build("family", {**ORACLE_FOR[kind], "class_conditional": True}, gmm)
    out = {}
    for w in (0.0, 2.0):
        smp = build("sampler", {"name": name, **params, "guidance": w}, gmm)
        out[w] = count_network_calls(fam, lambda: smp.sample(fam, PerSampleRNG.for_indices(1, range(8))))
    assert out[2.0][0] == 2 * out[0.0][0] > 0
    assert torch.isfinite(out[2.0][1]).all() and not torch.allclose(out[0.0][1], out[2.0][1])


@pytest.mark.parametrize("family", ["ddpm", "ni_ddpm", "smld", "vp_sde", "ve_sde", "flow_matching", "edm"])
def test_every_trainable_family_trains_its_label_embedding(family):
    from bench.rng import BatchRNG
    from bench.testing import ProbeDataset

    data = ProbeDataset("image", n=16)  # labelled 8x8 images, num_classes 2
    spec = {"name": family, "class_conditional": True, "network": {"name": "unet", "base": 8, "zero_init": False}}
    if family in ("smld", "ve_sde", "ni_smld"):
        spec["schedule"] = {"name": "geometric", "sigma_max": 5.0}
    fam = build("family", spec, data)
    assert fam.num_classes == 2 and fam.wants_labels
    loss = fam.loss(data.split("train"), BatchRNG(0, 16), labels=data.labels("train"))
    loss.backward()
    grad = fam.net.label.table.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad[:2].abs().sum() > 0
