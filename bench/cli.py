"""The ``bench`` command line: run, validate, plugins, ref, compare, power, ui, log, new-plugin.

Every user error ends as one line on stderr (``file:line:col: error: ...``) and exit code 2; a
failing case makes ``bench run`` exit 1; an internal error prints a one-line summary (set
``BENCH_DEBUG=1`` for the traceback) and exits 3.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .errors import BenchError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Benchmark diffusion and flow generative models; results go to MLflow.",
                  pretty_exceptions_enable=False)


def _err(message: str) -> None:
    from .redact import redact_text

    typer.echo(redact_text(message), err=True)


def guarded(fn: Callable) -> Callable:
    """Turn every exception into one clear line and an exit code (no Python traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:  # e.g. `bench plugins | head`
            sys.stderr.close()
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            _err("bench: interrupted")
            raise typer.Exit(130) from None
        except BenchError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(1) from None
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
            _err(f"bench: internal error: {type(exc).__name__}: {exc} (set BENCH_DEBUG=1 for the traceback)")
            raise typer.Exit(3) from None

    return wrapper


PluginsOpt = typer.Option(None, "--plugins", help="import this module as a plugin (repeatable)")
SetOpt = typer.Option(None, "--set", help="override a suite value, e.g. --set train.steps=100 (repeatable)")


def _manager(plugins: Optional[List[str]]):
    from .plugins import get_manager

    return get_manager(tuple(plugins or ()))


def _load(file: Path, plugins, overrides):
    from .suite import load_suite
    from .yamlload import load_yaml_file

    load_yaml_file(file)  # hostile YAML is refused before the plugins (and torch) are imported
    manager = _manager(plugins)
    suite = load_suite(file, manager.registries, manager.versions(), overrides or [])
    _check_classes(suite, manager.registries)
    return manager, suite


def _check_classes(suite, registries) -> None:
    """The cheap conformance check (:func:`bench.testing.class_problems`) of every component the suite
    names: one line per problem, exit 2, before anything runs."""
    from .testing import class_problems

    seen, problems = set(), []

    def visit(kind: str, spec) -> None:
        if not isinstance(spec, dict) or (kind, spec.get("name")) in seen:
            return
        seen.add((kind, spec["name"]))
        entry = registries[kind].entry(spec["name"])
        problems.extend(class_problems(entry))
        for key, sub_kind in entry.nested().items():
            visit(sub_kind, spec.get(key))

    for case in suite.cases:
        for kind, spec in (("dataset", case.dataset), ("family", case.family), ("sampler", case.sampler)):
            visit(kind, spec)
        for spec in case.metrics:
            visit("metric", spec)
    if problems:
        raise UserError(f"{len(problems)} component(s) do not follow their protocol (bench.protocols):\n"
                        + "\n".join(f"  {p}" for p in problems))


def _print_plan(suite) -> None:
    typer.echo(f"suite '{suite.name}': {len(suite.cases)} case(s)")
    for case in suite.cases:
        typer.echo(f"  {case.id}  [{case.hash}] train={case.train_key[:8]}")
        for metric, reason in case.skipped_metrics.items():
            typer.echo(f"      skip metric {metric}: {reason}")
    trainings = len({c.train_key for c in suite.cases})
    typer.echo(f"{trainings} distinct model(s) to train (train once, sample many)")
    if suite.pruned:
        typer.echo(f"pruned {len(suite.pruned)} incompatible combination(s):")
        for p in suite.pruned:
            typer.echo(f"  {p.dataset}/{p.family}/{p.sampler}/seed={p.seed}: {p.reason}")


def _check_run_flags(device: str | None, precision: str | None) -> None:
    """``--device`` and ``--precision`` checked as flags, so that an error names the flag."""
    from .device import PRECISIONS, resolve_device
    from .errors import Location

    if device is not None:
        try:
            resolve_device(device)
        except UserError as exc:
            raise UserError(exc.message, Location("--device")) from None
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}", Location("--precision"))


def _default_executor(suite) -> str:
    """``process`` when the suite has several trainings and a pool of two or more workers fits, else
    ``local`` (:func:`bench.executors.plan.default_executor`; the numbers are the same either way)."""
    from .device import pinnable_gpus
    from .executors.plan import case_cpus, default_executor

    return default_executor(trainings=len({c.train_key for c in suite.cases}),
                            cpus=max(case_cpus(c.to_dict()) for c in suite.cases),
                            gpus=pinnable_gpus(c.device for c in suite.cases))


@app.command()
@guarded
def run(file: Path = typer.Argument(..., help="suite YAML"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the cases and exit"),
        show_grid: bool = typer.Option(False, "--show-grid", help="with --dry-run: each case's realised "
                                       "sampling times and log-SNR steps (builds the components)"),
        overrides: Optional[List[str]] = SetOpt,
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI (default sqlite:///mlflow.db)"),
        executor: Optional[str] = typer.Option(None, "--executor", help="local | process | ray | a plugin's "
                                               "(default: process when a pool runs cases side by side, else local)"),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="parallel workers"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (e.g. auto)"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="skip cases that already finished"),
        retry_failed: bool = typer.Option(False, "--retry-failed",
                                          help="retrain models whose training failed before (default: fail fast)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
        results: Optional[Path] = typer.Option(None, "--results", help="results root (default from the suite)"),
        store: Optional[Path] = typer.Option(None, "--store", help="checkpoint/statistics store"),
        threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                              help="torch threads per case, for every case (default: the suite's, "
                                              "else resources.cpus, else 1; hashed)"),
        device: Optional[str] = typer.Option(None, "--device",
                                             help="auto | cpu | cuda | cuda:N | mps, for every case (default: the suite's, else auto)"),
        precision: Optional[str] = typer.Option(None, "--precision",
                                                help="fp32 | bf16 | fp16, for every case (default: the suite's, else fp32)"),
        plugins: Optional[List[str]] = PluginsOpt) -> None:
    """Run every case of a suite and log it to MLflow."""
    if show_grid and not dry_run:
        raise UserError("--show-grid goes with --dry-run")
    _check_run_flags(device, precision)
    # --device X is --set device=X: it overrides the suite's defaults and every matrix entry's (and so on)
    overrides = [*(overrides or []), *([f"device={device}"] if device else []),
                 *([f"precision={precision}"] if precision else []), *([f"threads={threads}"] if threads else [])]
    manager, suite = _load(file, plugins, overrides)
    if dry_run:  # before importing the session: a dry run needs neither MLflow nor the runner
        _print_plan(suite)
        if show_grid:
            from .timegrid import grid_lines

            typer.echo("realised sampling grids:")
            for line in grid_lines(suite.cases, manager.registries):
                typer.echo(line)
        return
    from .session import RunOptions, run_suite

    if not suite.cases:
        raise UserError("the suite expands to no runnable case", hint="see `bench run --dry-run`")
    executor = executor or _default_executor(suite)
    if executor == "ray" and workers is None and ray_address is None:
        workers = os.cpu_count()
    manager.registries.executor.entry(executor)
    opts = RunOptions(tracking_uri=tracking_uri, executor=executor, workers=workers, ray_address=ray_address,
                      resume=resume, quiet=quiet or not sys.stderr.isatty(), plugins=tuple(plugins or ()),
                      results_root=str(results) if results else None, store=str(store) if store else None,
                      retry_failed=retry_failed)
    code = run_suite(suite, manager, opts, echo=typer.echo)
    raise typer.Exit(code)


@app.command()
@guarded
def validate(file: Path = typer.Argument(..., help="suite YAML"), overrides: Optional[List[str]] = SetOpt,
             plugins: Optional[List[str]] = PluginsOpt) -> None:
    """Check a suite (syntax, names, types, ranges) without running it."""
    _, suite = _load(file, plugins, overrides)
    typer.echo(f"{file}: ok ({len(suite.cases)} case(s), {len(suite.pruned)} pruned)")


@app.command("plugins")
@guarded
def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
                check: bool = typer.Option(False, "--check", help="build every component with its defaults on a "
                                           "small probe dataset and check its protocol (exit 1 on a problem)"),
                kind: Optional[List[str]] = typer.Option(None, "--kind", help="with --check: only this kind (repeatable)"),
                plugins: Optional[List[str]] = PluginsOpt) -> None:
    """List plugins, their versions, status and components."""
    manager = _manager(plugins)
    if check:
        raise typer.Exit(_check_plugins(manager, kind))
    infos = [info.as_dict() for info in manager.infos.values()]
    if as_json:
        typer.echo(json.dumps(infos, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "version", "status", "components")
    for info in infos:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info["components"].items()))
        status = info["status"] if info["status"] != "error" else f"error: {info['error']}"
        table.add_row(info["name"], info["version"], status, comps)
    Console(width=max(120, _term_width())).print(table)


def _check_plugins(manager, kinds: Optional[List[str]]) -> int:
    """``bench plugins --check``: one line per problem (and per component not built), a summary, exit 1
    on any problem (a plugin that failed to load is one)."""
    from .testing import check_registries

    for kind in kinds or []:
        manager.registries[kind]  # unknown kinds: a clear error
    problems = [f"plugin '{i.name}': failed to load: {i.error}" for i in manager.infos.values() if i.status == "error"]
    results = check_registries(manager.registries, kinds or None)
    for line in problems:
        typer.echo(f"problem: {line}")
    for r in results:
        for line in r.problems:
            typer.echo(f"problem: {line}")
        if r.skipped:
            typer.echo(f"not built: {r.kind} '{r.name}': {r.skipped}")
    problems += [p for r in results for p in r.problems]
    built = sum(1 for r in results if not r.skipped)
    typer.echo(f"checked {built} of {len(results)} component(s): {len(problems)} problem(s)")
    return 1 if problems else 0


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


@app.command()
@guarded
def ref(target: str = typer.Argument(..., help="a suite YAML, or a dataset name (e.g. digits8)"),
        overrides: Optional[List[str]] = SetOpt,
        metric: Optional[List[str]] = typer.Option(None, "--metric", "-m",
                                                   help="with a dataset name: metric(s) to prepare (default fid)"),
        num_samples: Optional[int] = typer.Option(None, "--num-samples", min=2,
                                                  help="with a dataset name: the generated sample count to plan for"),
        seed: int = typer.Option(0, "--seed", help="with a dataset name: the seed"),
        store: Optional[Path] = typer.Option(None, "--store", help="checkpoint/statistics store"),
        plugins: Optional[List[str]] = PluginsOpt) -> None:
    """Precompute reference statistics (FID/KID/PRC features of the real data) into the store."""
    from .reference import items_from_cases, precompute

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.exists():
        manager, suite = _load(path, plugins, overrides)
        items, store_dir = items_from_cases(suite.cases), str(store or suite.store)
        typer.echo(f"bench ref: suite '{suite.name}', {len(suite.cases)} case(s)")
    else:
        manager = _manager(plugins)
        regs = manager.registries
        regs.dataset.entry(target)  # unknown names: a clear error with the nearest valid one
        dataset_spec = {"name": target}
        specs = []
        for m in metric or ["fid"]:
            regs.metric.entry(m)
            specs.append({"name": m})
        items = [(dataset_spec, spec, num_samples, seed) for spec in specs]
        store_dir = str(store or ".bench-store")
        typer.echo(f"bench ref: dataset '{target}'")
    summaries = precompute(items, manager.registries, store_dir, echo=typer.echo)
    typer.echo(f"bench ref: {len(summaries)} reference set(s) ready in {store_dir}")


@app.command()
@guarded
def compare(experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="experiment (= suite name)"),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
            rows: Optional[str] = typer.Option(None, "--rows", help="row key: dataset|family|sampler|seed|<param>; "
                                               "default: every varying axis but seeds and --cols"),
            cols: str = typer.Option("sampler", "--cols", help="column key"),
            metric: Optional[str] = typer.Option(None, "--metric", "-m", help="metric to tabulate"),
            where: Optional[List[str]] = typer.Option(None, "--where", help="filter, e.g. dataset=digits8"),
            average: Optional[List[str]] = typer.Option(None, "--average", help="also average over this axis "
                                                        "(e.g. dataset; repeatable); seeds are always averaged"),
            baseline: Optional[str] = typer.Option(None, "--baseline", help="KEY=VALUE of the --rows key, e.g. "
                                                   "family=ddpm: add each row's difference against it"),
            fmt: str = typer.Option("table", "--format", help="table | markdown | csv"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the table here"),
            plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG: metric against --x per --group"),
            x: str = typer.Option("nfe", "--x", help="x axis of --plot (a metric, e.g. nfe or train_time_s)"),
            group: str = typer.Option("family+sampler.name", "--group", help="one line per value of this key")) -> None:
    """Tabulate a metric over runs: mean ± 95% interval over seeds, differences against a baseline."""
    from .compare import compare_runs

    text = compare_runs(experiment, tracking_uri, rows, cols, metric, where or [], fmt, output, plot, x, group,
                        average=average or [], baseline=baseline)
    typer.echo(text)


@app.command()
@guarded
def power(delta: float = typer.Option(..., "--delta", help="the difference of the metric to detect"),
          experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="the pilot's experiment"),
          tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
          metric: Optional[str] = typer.Option(None, "--metric", "-m", help="metric"),
          rows: Optional[str] = typer.Option(None, "--rows", help="row key (cells as in bench compare)"),
          cols: str = typer.Option("sampler", "--cols", help="column key"),
          where: Optional[List[str]] = typer.Option(None, "--where", help="filter, e.g. dataset=digits8"),
          average: Optional[List[str]] = typer.Option(None, "--average", help="also average over this axis"),
          baseline: Optional[str] = typer.Option(None, "--baseline", help="KEY=VALUE: use the spread of the "
                                                 "paired differences against this row"),
          alpha: float = typer.Option(0.05, "--alpha", help="two-sided significance level"),
          target: float = typer.Option(0.8, "--power", help="the power to reach")) -> None:
    """Seeds (and samples) a pilot run says are needed to detect --delta at 80% power."""
    from .power import power_report

    typer.echo(power_report(experiment, tracking_uri, metric, delta, where or [], rows, cols, average or [],
                            baseline, alpha, target))


@app.command()
@guarded
def ui(tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
       experiment: Optional[str] = typer.Option(None, "--experiment", "-e",
                                                help="experiment to open (default: the one bench logged last)"),
       host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(5000, "--port")) -> None:
    """Start the MLflow UI on the store and print the experiment's runs view (key metrics as columns).

    With an http(s) tracking URI no server is started: bench prints the view's URL on that server."""
    from mlflow import MlflowClient

    from .tracking import _quiet_mlflow, check_tracking_uri, redact_uri
    from .ui import check_port_free, pick_experiment, runs_view_url, save_key_metrics_view, serve, server_command

    remote = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").startswith(("http://", "https://"))
    uri = check_tracking_uri(tracking_uri, must_exist=True)
    if not remote:
        check_port_free(host, port)
    _quiet_mlflow()
    client = MlflowClient(tracking_uri=uri)
    exp = pick_experiment(client, experiment)
    view = save_key_metrics_view(client, exp.experiment_id) if exp is not None else None
    base = re.sub(r"//[^/@]*@", "//", uri) if remote else f"http://{host}:{port}"  # no credentials in the URL
    url = runs_view_url(base, exp.experiment_id if exp is not None else None, view)
    what = f"experiment '{exp.name}'" if exp is not None else "no bench experiment yet"
    typer.echo(f"MLflow UI for {redact_uri(uri)}, {what}: {url}")
    if remote:
        return
    sys.stdout.flush()
    raise typer.Exit(serve(server_command(uri, host, port), f"http://{host}:{port}/health", typer.echo))


@app.command("log")
@guarded
def log_cmd(results_dir: Path = typer.Argument(..., help="a results/<suite>/<timestamp> directory"),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
            experiment: Optional[str] = typer.Option(None, "--experiment")) -> None:
    """Feed MLflow again from a local results directory (the source of truth)."""
    from .session import relog

    if not results_dir.is_dir():
        raise UserError(f"not a directory: {results_dir}")
    _check_contained(results_dir)
    raise typer.Exit(relog(results_dir, tracking_uri, experiment, echo=typer.echo))


def _check_contained(results_dir: Path) -> None:
    """Refuse a results directory whose records name files outside it: every ``case_dir`` and
    artifact, and every file under a case directory, must resolve (symlinks and ``..`` followed)
    inside ``results_dir``, so that ``bench log`` never uploads anything else."""
    from .names import inside

    for path in sorted((results_dir / "cases").glob("*/record.json")):
        if not inside(path, results_dir):
            raise UserError(f"{path}: refused: the record lies outside {results_dir} (a symlink)")
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # relog reports unreadable records
        if not isinstance(record, dict):
            raise UserError(f"{path}: refused: a case record must be a JSON object")
        case_dir = record.get("case_dir")
        # relog uploads the record's own directory whatever case_dir says; a case_dir that names another
        # case directory than this one (.../cases/<this slug>, e.g. before the results were moved) is crafted
        if case_dir is not None and (not isinstance(case_dir, str) or "\0" in case_dir
                                     or Path(case_dir).parts[-2:] != path.parent.parts[-2:]
                                     or ".." in Path(case_dir).parts):
            raise UserError(f"{path}: refused: case_dir {str(case_dir)[:200]!r} is not this record's directory")
        artifacts = record.get("artifacts") or []
        for name in artifacts if isinstance(artifacts, list) else [artifacts]:
            if not isinstance(name, str) or not inside(path.parent / name, path.parent):
                raise UserError(f"{path}: refused: artifact {str(name)[:200]!r} lies outside {path.parent}")
        for file in path.parent.rglob("*"):
            if not inside(file, path.parent):
                raise UserError(f"{path.parent}: refused: {file.name} links outside {results_dir}")


@app.command("new-plugin")
@guarded
def new_plugin(name: str = typer.Argument(..., help="plugin (package) name, e.g. my_sampler"),
               kind: List[str] = typer.Option(..., "--kind", help="component kind (repeatable: one package, "
                                              "one example per kind)"),
               directory: Optional[Path] = typer.Option(None, "--dir", help="where to create it (default ./NAME)")) -> None:
    """Write an installable plugin package with a working example component (per kind) and tests."""
    from .scaffold import write_plugin

    path = write_plugin(name, kind, directory)
    typer.echo(f"created {path}\nnext: pip install -e {path} && pytest {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
