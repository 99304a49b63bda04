"""One ``bench run``: results directory, MLflow parent run, resume, executor, summary.

The local results directory (``results/<suite>/<timestamp>/``) is the source of truth: the resolved
suite, one ``record.json`` per case and its artifacts. MLflow is fed from it as each case ends and
can be re-fed with ``bench log DIR``.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .device import pinnable_gpus
from .executors import signals
from .executors.plan import case_cpus
from .plugins import PluginManager, _bench_version
from .redact import redact_secrets
from .runner import CaseJob, RunSettings
from .suite import ExpandedSuite, dump_yaml
from .timing import machine_fingerprint
from .tracking import Tracker, check_tracking_uri, driver_tags, redact_uri

HEADLINE = ("fid", "fid_floor", "kid", "swd", "swd_floor", "mmd", "bpd", "nll", "psnr", "ssim")
BOOKKEEPING = {"nfe", "train_time_s", "sample_time_s", "samples_per_s", "ms_per_nfe", "peak_rss_mb", "peak_gpu_mem_mb", "num_params",
               "num_samples", "metric_time_s", "final_loss", "steps"}


@dataclass
class RunOptions:
    tracking_uri: str | None = None
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    resume: bool = True
    quiet: bool = False
    plugins: tuple[str, ...] = ()
    results_root: str | None = None
    store: str | None = None
    retry_failed: bool = False


def run_suite(suite: ExpandedSuite, manager: PluginManager, opts: RunOptions,
              echo: Callable[[str], None] = print) -> int:
    # tracking first: a bad tracking URI must not leave a results directory behind
    uri = check_tracking_uri(opts.tracking_uri or suite.tracking.get("uri"))
    # the executor next: it may start its workers now, while the driver opens MLflow
    pinned = {"gpus": pinnable_gpus(c.device for c in suite.cases),  # and workers x cpus <= cores
              "cpus": max((case_cpus(c.to_dict()) for c in suite.cases), default=1)} if opts.executor == "process" else {}
    executor = manager.registries.executor.create({"name": opts.executor, "workers": opts.workers, **pinned,
                                                   **({"address": opts.ray_address} if opts.ray_address else {})})
    tracker = Tracker(uri, suite.tracking["experiment"])
    for run_id in tracker.close_stale_parents():
        echo(f"bench: parent run {run_id[:8]} of a bench run that is gone (killed) was still RUNNING; marked KILLED")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = Path(opts.results_root or suite.results) / suite.name / stamp
    n = 1
    while results_dir.exists():
        n += 1
        results_dir = results_dir.with_name(f"{stamp}-{n}")
    results_dir.mkdir(parents=True)
    (results_dir / "suite.yaml").write_text(dump_yaml(redact_secrets(suite.raw)))  # no credentials on disk
    (results_dir / "cases.json").write_text(json.dumps(redact_secrets([c.to_dict() for c in suite.cases]), indent=1))

    fingerprint = machine_fingerprint()
    tags = {"bench.version": _bench_version(), "bench.suite": suite.name, "bench.results_dir": str(results_dir),
            **{f"bench.machine.{k}": v for k, v in fingerprint.items()}, "bench.host": socket.gethostname(),
            **driver_tags()}
    for name, version in manager.versions().items():
        tags[f"bench.plugin.{name}"] = version
    parent = tracker.start_parent(f"{suite.name}@{stamp}", {"suite": suite.name, "cases": len(suite.cases),
                                                           "executor": opts.executor}, tags)
    case_tags = {k: v for k, v in tags.items() if k.startswith(("bench.version", "bench.machine", "bench.plugin"))}

    finished = tracker.finished_cases() if opts.resume else {}
    todo = [c for c in suite.cases if c.hash not in finished]
    resumed = [c for c in suite.cases if c.hash in finished]
    echo(f"bench: {len(suite.cases)} case(s) in suite '{suite.name}'"
         + (f", {len(resumed)} already finished (resume; --no-resume to redo)" if resumed else "")
         + (f", {len(suite.pruned)} incompatible combination(s) pruned" if suite.pruned else ""))
    echo(f"bench: tracking {redact_uri(tracker.uri)}  experiment '{tracker.experiment}'  parent run {parent[:8]}")

    store = opts.store or suite.store
    if opts.retry_failed:
        from .store import Store
        from .trainer import clear_failures

        cleared = clear_failures(Store(store), {c.train_key for c in todo})
        echo(f"bench: --retry-failed: {cleared} failed training(s) will be retried")
    settings = RunSettings(store=store, results_dir=str(results_dir), plugins=tuple(opts.plugins),
                           quiet=opts.quiet)
    records: list[dict[str, Any]] = []
    for case in resumed:
        run = finished[case.hash]
        records.append({"case_id": case.id, "case_hash": case.hash, "status": "ok", "resumed": True,
                        "metrics": dict(run.data.metrics), "run_id": run.info.run_id})

    total = len(todo)

    def jobs() -> Iterator[CaseJob]:
        for i, case in enumerate(todo):
            manager.hook.bench_case_started(case=case)
            if opts.executor == "local":
                echo(f"[{i + 1}/{total}] {case.id}")
            yield CaseJob(case.to_dict(), settings, i, total)

    def on_result(record: dict[str, Any]) -> None:
        try:
            record["run_id"] = tracker.log_case(record, case_tags)
        except Exception as exc:  # keep the local record; `bench log DIR` re-feeds MLflow
            record["tracking_error"] = f"{type(exc).__name__}: {exc}"
            echo(f"  warning: MLflow logging failed ({record['tracking_error']}); record kept in {results_dir}")
        records.append(record)
        case = next((c for c in todo if c.hash == record["case_hash"]), None)
        if case is not None:
            manager.hook.bench_case_finished(case=case, record=record)
        echo("  " + _status_line(record))
        for warning in record.get("warnings") or []:
            echo(f"  warning: {warning}")

    old = signals.install()  # SIGINT/SIGTERM stop the run; a component's KeyboardInterrupt does not
    interrupted = False
    try:
        executor.run(jobs(), on_result)
    except KeyboardInterrupt:
        interrupted = True
        echo("bench: interrupted; finished cases are kept, and `bench run` again resumes the rest")
        _log_killed(results_dir, records, tracker, case_tags)
    finally:
        signals.restore(old)

    failed = [r for r in records if r["status"] != "ok"]
    summary = summarize(records)
    (results_dir / "summary.md").write_text(summary)
    (results_dir / "records.json").write_text(json.dumps(
        redact_secrets([{k: v for k, v in r.items() if k != "series"} for r in records]), indent=1, default=str))
    manager.hook.bench_suite_finished(suite=suite, records=records, results_dir=str(results_dir))
    if not interrupted:  # comparison.md/.csv: logged with the parent run's artifacts just below
        from .compare import write_suite_comparison

        write_suite_comparison(tracker.uri, tracker.experiment, [r["case_id"] for r in records], results_dir, echo)
    status = "KILLED" if interrupted else ("FAILED" if failed else "FINISHED")
    tracker.end_parent(status, {"cases_ok": float(len(records) - len(failed)), "cases_failed": float(len(failed))},
                       results_dir if not interrupted else None)
    echo("")
    echo(summary)
    echo(f"results: {results_dir}")
    echo(f"MLflow:  bench ui --tracking-uri {redact_uri(tracker.uri)}   (or: mlflow ui --backend-store-uri {redact_uri(tracker.uri)})")
    echo(f"compare: bench compare --experiment {tracker.experiment} --tracking-uri {redact_uri(tracker.uri)}")
    if interrupted:
        return 130
    return 1 if failed else 0


def _log_killed(results_dir: Path, records: list[dict], tracker: Tracker, tags: dict) -> None:
    """Log cases whose runner marked them killed (their record.json exists) but never reached MLflow."""
    seen = {r["case_hash"] for r in records}
    for path in sorted((results_dir / "cases").glob("*/record.json")) if (results_dir / "cases").exists() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record["case_hash"] in seen:
            continue
        if record.get("status") == "running":
            record["status"] = "killed"
        try:
            tracker.log_case(record, tags)
        except Exception:
            pass
        records.append(record)


def _status_line(record: dict[str, Any]) -> str:
    m = record.get("metrics") or {}
    bits = [f"{k}={m[k]:.4g}" for k in HEADLINE if k in m]
    if "nfe" in m:
        bits.append(f"nfe={m['nfe']:.0f}")
    if "train_time_s" in m:
        bits.append(f"train={m['train_time_s']:.1f}s" + ("" if record.get("trained") else " (cached)"))
    if "sample_time_s" in m:
        bits.append(f"sample={m['sample_time_s']:.2f}s")
    head = record["status"].upper()
    if record["status"] != "ok":
        return f"{head}: {record.get('error', '')}"
    return f"{head}  " + "  ".join(bits)


def summarize(records: list[dict[str, Any]]) -> str:
    """A markdown table of the headline metrics, one row per case."""
    present = {k for r in records for k in (r.get("metrics") or {})}
    cols = [k for k in HEADLINE if k in present]
    def auxiliary(k: str) -> bool:  # e.g. fid_extractor_test_acc, fid_feature_dim: details of a headline metric
        return k.startswith(tuple(f"{h}_" for h in HEADLINE)) or k.startswith(("time_", "timing_")) \
            or k.endswith(("_floor", "_nfe", "_time_s", "_s", "_iqr", "_min", "_max", "_std")) \
            or k.startswith(tuple(f"{b}_" for b in BOOKKEEPING))

    cols += sorted(k for k in present - set(HEADLINE) - BOOKKEEPING if not auxiliary(k))[: max(0, 8 - len(cols))]
    cols += [k for k in ("nfe", "samples_per_s", "train_time_s") if any(k in (r.get("metrics") or {}) for r in records)]
    lines = ["| case | status | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in sorted(records, key=lambda r: r["case_id"]):
        m = r.get("metrics") or {}
        cells = [f"{m[c]:.4g}" if c in m else "" for c in cols]
        status = r["status"] + (" (resumed)" if r.get("resumed") else "")
        lines.append(f"| {r['case_id']} | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relog(results_dir: Path, uri: str | None, experiment: str | None, echo=print) -> int:
    """``bench log DIR``: feed MLflow again from a results directory."""
    records = []
    for path in sorted((results_dir / "cases").glob("*/record.json")):
        try:
            records.append({**json.loads(path.read_text()), "case_dir": str(path.parent)})  # its own files only
        except (OSError, ValueError):
            echo(f"skipping unreadable {path}")
    if not records:
        from .errors import UserError

        raise UserError(f"no case records under {results_dir}/cases")
    suite = records[0]["case_id"].split("/")[0]
    tracker = Tracker(check_tracking_uri(uri), experiment or suite)
    tracker.start_parent(f"{suite}@relog", {"suite": suite, "cases": len(records), "relog_of": str(results_dir)},
                         {"bench.version": _bench_version(), "bench.suite": suite})
    for r in records:
        tracker.log_case(r)
    failed = sum(r["status"] != "ok" for r in records)
    tracker.end_parent("FAILED" if failed else "FINISHED", {"cases_ok": float(len(records) - failed),
                                                           "cases_failed": float(failed)}, None)
    echo(f"logged {len(records)} case(s) to {redact_uri(tracker.uri)} experiment '{tracker.experiment}'")
    return 0


