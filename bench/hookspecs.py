"""The plugin contract of bench (pluggy project ``bench``, entry-point group ``bench``).

A plugin is a module (or object) with functions decorated by :data:`bench.hookimpl` whose names are
the hooks below. Register it in your package's ``pyproject.toml``::

    [project.entry-points.bench]
    my_plugin = "my_pkg.plugin"

Registration hooks receive a ``register`` callback for one component kind::

    @bench.hookimpl
    def bench_register_samplers(register):
        register("my_sampler", "my_pkg.sampler:MySampler", requires=["vp"])

``register(name, target, *, defaults=None, **meta)``:

- ``target`` is a class or factory, or a ``"module:attr"`` string imported lazily when a case uses it;
- the factory's signature is the component's parameter schema (pydantic validates suite values
  against its annotations before any case runs); a parameter named ``context`` receives a
  :class:`bench.context.BuildContext`;
- ``defaults`` are parameter values the entry presets (e.g. ``toy2d/moons`` presets ``which="moons"``);
- ``meta`` declares static facts the suite expander uses without importing anything. Keys bench
  reads: ``provides`` (families: capabilities such as ``"eps"``, ``"score"``, ``"vp"``, ``"ve"``,
  ``"likelihood"``, ``"flow"``), ``requires`` (samplers and metrics: capabilities the family must
  provide), ``modalities`` (metrics: ``"points"``, ``"image"``, ``"video"``; datasets: their
  ``modality``), ``trainable`` (families: ``False`` skips training), ``description``.

The protocols each kind's objects follow are in :mod:`bench.protocols`.
"""
from __future__ import annotations

import pluggy

PROJECT = "bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: hook name -> component kind filled by that hook
REGISTER_HOOKS = {
    "bench_register_datasets": "dataset",
    "bench_register_noise_models": "noise",
    "bench_register_schedules": "schedule",
    "bench_register_families": "family",
    "bench_register_samplers": "sampler",
    "bench_register_networks": "network",
    "bench_register_metrics": "metric",
    "bench_register_feature_extractors": "feature_extractor",
    "bench_register_executors": "executor",
}


@hookspec
def bench_register_datasets(register):
    """Register datasets (:class:`bench.protocols.Dataset`)."""


@hookspec
def bench_register_noise_models(register):
    """Register noise models (:class:`bench.protocols.NoiseModel`): the covariance Sigma of the noise."""


@hookspec
def bench_register_schedules(register):
    """Register noise schedules (:class:`bench.protocols.Schedule`)."""


@hookspec
def bench_register_families(register):
    """Register generative families (:class:`bench.protocols.Family`). Declare ``provides=[...]``."""


@hookspec
def bench_register_samplers(register):
    """Register samplers (:class:`bench.protocols.Sampler`). Declare ``requires=[...]``."""


@hookspec
def bench_register_networks(register):
    """Register network builders returning ``torch.nn.Module``."""


@hookspec
def bench_register_metrics(register):
    """Register metrics (:class:`bench.protocols.Metric`). Declare ``modalities`` and ``requires``."""


@hookspec
def bench_register_feature_extractors(register):
    """Register feature extractors for FID/KID/precision-recall."""


@hookspec
def bench_register_executors(register):
    """Register executors (:class:`bench.protocols.Executor`) that run lists of cases."""


@hookspec
def bench_new_plugin_templates():
    """Return a directory of ``bench new-plugin`` templates (or None): ``kinds.json`` maps a kind to
    ``{"class": ..., "meta": {...}}`` (the example class and its registration meta), with
    ``<kind>.py.tmpl`` (the component module) and ``test_<kind>.py.tmpl`` (its test) next to it.
    Templates that need a plugin's interface live with that plugin (bench_diffusion: ``sampler``)."""


@hookspec
def bench_case_started(case):
    """Called on the driver before a case runs. ``case`` is a :class:`bench.suite.Case`."""


@hookspec
def bench_case_finished(case, record):
    """Called on the driver after a case ends (ok, failed or skipped). ``record`` is a dict."""


@hookspec
def bench_suite_finished(suite, records, results_dir):
    """Called once after every case of a ``bench run`` has ended."""


@hookspec(firstresult=True)
def bench_run_case(case, context):
    """Run one case and return its record (dict). bench implements it; wrap it with
    ``@hookimpl(wrapper=True)`` to time, profile or alter a case run::

        @bench.hookimpl(wrapper=True)
        def bench_run_case(case, context):
            started = time.time()
            record = yield
            record["metrics"]["my_wall_s"] = time.time() - started
            return record
    """
