"""CNF log-likelihood: bench's ``cnf`` family (method ``ode``) vs a direct torchdiffeq ``odeint`` call.

The family is built through bench's registries on toy2d/8gaussians (2-D, so ``divergence: auto``
is the exact trace), defaults otherwise (ODEMLP 64-64-64, softplus, one block, evaluation solver
bosh3 with atol = rtol = 1e-5), and trained briefly with plain Adam on its own loss so that the
dynamics are not the zero-initialised identity. Test points: the first ``--points`` (default 1000)
of the test split, in batches of 200.

Variants, interleaved over ``--repeats`` (ratios: median of per-repeat ratios):

- bench, family: ``family.log_likelihood(x, rng, method="ode")`` per batch (NFE hooks, solver config);
- bench, metric: the ``nll`` metric (per-sample RNG streams, batches of 200) through a
  ``MetricContext``, as a run computes it;
- direct: our own augmented dynamics (the same ``ODEMLP`` module, the exact trace by one
  ``torch.autograd.grad`` per dimension) integrated with ``torchdiffeq.odeint`` from t = 0 to 1,
  same method, tolerances and ``max_num_steps``; log p(x) = log N(z; 0, I) + int Tr(df/dv) dt.

Reported: seconds, bench / direct, max |NLL difference| per point (nats) and the mean NLL.
"""
from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

import _common as C


class Augmented(torch.nn.Module):
    """d/dt (v, l) = (f(t, v), Tr df/dv), the trace exact (one VJP per dimension)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, state):
        v = state[0]
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            f = self.net(t, v)
            trace = sum(torch.autograd.grad(f[:, i].sum(), v, retain_graph=True)[0][:, i]
                        for i in range(v.shape[1]))
        return f.detach(), trace.detach()


def direct_nll(net, x, cfg):
    state = (x, torch.zeros(len(x)))
    z, trace = (s[-1] for s in odeint(Augmented(net), state, torch.tensor([0.0, 1.0]), rtol=cfg.rtol,
                                      atol=cfg.atol, method=cfg.method,
                                      options={"max_num_steps": cfg.max_num_steps}))
    logp = -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + trace
    return -logp


def main() -> None:
    p = C.parser(__doc__, repeats=15)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=100)
    args = p.parse_args()
    C.setup(args)
    if args.quick:
        args.points, args.repeats, args.train_steps = 400, min(args.repeats, 3), 30
    from bench.rng import PerSampleRNG
    from bench_metrics.testing import metric_context

    regs = C.registries()
    dataset = regs.dataset.create({"name": "toy2d/8gaussians", "n_test": args.points})
    family = C.build("family", {"name": "cnf"}, dataset)
    C.quick_train(family, dataset.split("train"), args.train_steps, batch=256, lr=1e-2)
    net, cfg = family.flow.blocks[0].net, family.eval_solver
    x = dataset.split("test")
    batches = [x[lo:lo + 200] for lo in range(0, len(x), 200)]
    nll_metric = regs.metric.create({"name": "nll", "num_samples": args.points, "batch_size": 200})
    ctx = metric_context(dataset, None, family=family)

    def bench_family():
        return torch.cat([family.log_likelihood(b, PerSampleRNG.for_indices(0, range(len(b))), method="ode").nll
                          for b in batches])

    def direct():
        with torch.no_grad():
            return torch.cat([direct_nll(net, b, cfg) for b in batches])

    ours, theirs = bench_family(), direct()
    diff = float((ours - theirs).abs().max())
    t = C.interleave({"bench family": lambda: C.wall(bench_family),
                      "bench metric": lambda: C.wall(nll_metric.compute, ctx),
                      "direct": lambda: C.wall(direct)}, args.repeats, warmup=False)
    rows = [["bench `family.log_likelihood`", C.spread(t["bench family"]),
             f"**{C.ratio(t, 'bench family', 'direct'):.3f}**"],
            ["bench `nll` metric", C.spread(t["bench metric"]), f"{C.ratio(t, 'bench metric', 'direct'):.3f}"],
            ["direct `torchdiffeq.odeint`", C.spread(t["direct"]), "1.000"]]
    body = C.table(["variant", "seconds, median [min-max]", "ratio to direct"], rows)
    notes = [f"cnf on toy2d/8gaussians (exact trace, {cfg.method}, atol = rtol = {cfg.atol:g}), "
             f"{args.train_steps} Adam steps; {len(x)} test points in batches of 200; {args.repeats} interleaved repeats",
             f"max |NLL bench - NLL direct| = {diff:.1e} nats (mean NLL {float(ours.mean()):.4f} nats per point, "
             f"metric `nll` = {nll_metric.compute(ctx)['nll']:.4f} nats per dim)"]
    C.emit("CNF likelihood: bench vs torchdiffeq", body, args, notes)


if __name__ == "__main__":
    main()
