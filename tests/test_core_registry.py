"""The registry resolves a spec in one pass and stamps the registered capabilities onto objects."""
from typing import Annotated

import pydantic
import pytest
from pydantic import Field

from bench.registry import Registries


class Solver:
    def __init__(self, order: Annotated[int, Field(ge=1)] = 2, tol: float = 1e-3):
        self.order, self.tol = order, tol


class Sampler:
    def __init__(self, steps: Annotated[int, Field(ge=1)], solver: dict | str = "euler", scale: tuple = (1, 2),
                 context=None):
        self.steps, self.solver, self.scale = steps, solver, scale


@pytest.fixture
def regs():
    regs = Registries()
    regs.sampler.register("s", Sampler, requires=["vp", "score"], components={"solver": "network"})
    regs.sampler.register("s10", Sampler, defaults={"scale": (3,)}, requires=["vp"])
    regs.network.register("euler", Solver, defaults={"order": 1})
    regs.network.register("rk", Solver)
    return regs


def _nested(regs):
    def resolve(key, kind, spec):
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        return regs[kind].resolve(spec.pop("name"), spec, spec.pop("id", None))
    return resolve


def test_resolve_labels_user_params_validates_and_fills_defaults(regs):
    out = regs.sampler.resolve("s", {"steps": "20"}, None, _nested(regs))
    # the label names what the user set; the nested default spec becomes explicit, with its own defaults
    assert out == {"name": "s", "steps": 20, "solver": {"name": "euler", "id": "euler", "order": 1, "tol": 1e-3},
                   "id": "s[steps=20]", "scale": [1, 2]}
    out = regs.sampler.resolve("s", {"steps": 5, "solver": {"name": "rk", "tol": 0.5}}, None, _nested(regs))
    assert out["id"] == "s[solver=rk(tol=0.5),steps=5]" and out["solver"]["order"] == 2
    assert regs.sampler.resolve("s10", {"steps": 1}, "mine")["id"] == "mine"
    assert regs.sampler.resolve("s10", {"steps": 1})["scale"] == [3]  # the entry's preset wins
    with pytest.raises(pydantic.ValidationError):
        regs.sampler.resolve("s", {"steps": 0})
    with pytest.raises(pydantic.ValidationError):
        regs.sampler.resolve("s", {"steps": 1, "nope": 1})


def test_create_stamps_registered_capabilities(regs):
    obj = regs.sampler.create({"name": "s", "id": "x", "steps": 3})
    assert obj.requires == frozenset({"vp", "score"}) and obj.bench_spec == {"name": "s", "steps": 3}
    assert regs.sampler.create({"name": "s10", "steps": 3}).requires == frozenset({"vp"})
    assert not hasattr(regs.network.create({"name": "rk"}), "requires")


def test_shipped_components_carry_their_registered_capabilities(manager, tmp_path):
    from bench.context import BuildContext
    from bench.store import Store

    regs, store = manager.registries, Store(tmp_path)
    ctx = BuildContext.from_registries(regs, seed=0, store=store)
    assert regs.sampler.create({"name": "ddim", "steps": 3}, context=ctx).requires == frozenset({"vp"})
    data = ctx.build("dataset", {"name": "gaussian", "dim": 2})
    ctx = BuildContext.from_registries(regs, seed=0, store=store, dataset=data)
    assert ctx.data is data.info
    family = regs.family.create({"name": "oracle_ve"}, context=ctx)
    assert family.provides == frozenset(regs.family.entry("oracle_ve").meta["provides"])
    assert "ve" in family.provides and "vp" not in family.provides


def test_schedule_and_noise_defaults_and_bounds_live_in_the_class(manager):
    import inspect

    from bench_diffusion.noise import GFF
    from bench_diffusion.schedules import Karras, Linear

    regs = manager.registries
    assert regs.schedule.entry("linear").load() is Linear and regs.schedule.entry("karras").load() is Karras
    gff = regs.noise.entry("gff").signature().parameters
    assert list(gff) == ["gamma", "dc", "field"]  # shape comes from the build context (from_context), not the suite
    assert all(gff[k].default == inspect.signature(GFF).parameters[k].default for k in ("gamma", "dc", "field"))
    assert regs.schedule.resolve("karras", {})["rho"] == 7.0
    for kind, name, params in (("schedule", "linear", {"beta_max": 2}), ("schedule", "karras", {"rho": 0}),
                               ("schedule", "geometric", {"sigma_max": "big"}), ("noise", "gff", {"gamma": 5})):
        with pytest.raises(pydantic.ValidationError):
            regs[kind].resolve(name, params)
