"""One case: build -> train or load -> sample -> measure -> record.

``run_case(job)`` is what executors call (in this process, a worker process or a Ray task); it
returns the case record, a plain JSON-able dict, and never raises for a failing case: the failure is
the record's ``status`` with the traceback written next to it. Any exception a component raises,
``SystemExit`` and ``KeyboardInterrupt`` included, fails the case only; only a SIGINT/SIGTERM received
by this process (``executors.signals``) propagates, after the record is marked ``killed``.
The training loop itself lives in ``trainer.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import plots, samplefile, train_state, trainer
from .context import BuildContext, MetricContext, MetricSkipped, SampleOutput
from .device import autocast, tf32, torch_threads
from .errors import BudgetExceeded, UserError
from .samplefile import SampleWriter
from .samplesink import SampleSink
from .executors import signals
from .redact import redact_secrets
from .rng import derive_seed, sample_batches
from .store import Store, content_key
from .suite import Case, EvalConfig, dump_yaml, label
from .timing import DeviceClock, NFECounter, PhaseTimer, peak_gpu_mem_mb, peak_rss_mb


@dataclass
class RunSettings:
    """Everything a worker needs besides the case (picklable)."""

    store: str
    results_dir: str
    plugins: tuple[str, ...] = ()
    quiet: bool = False


@dataclass
class CaseJob:
    case: dict[str, Any]
    settings: RunSettings
    index: int = 0
    total: int = 1


def case_slug(case_id: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in case_id.replace("/", "__"))
    return out[:150] + "-" + content_key(case_id)[:8] if len(out) > 160 else out


def run_case(job: CaseJob) -> dict[str, Any]:
    """Entry point for executors: run the case through the ``bench_run_case`` hook chain, on the
    case's torch thread count (:func:`bench.device.torch_threads`)."""
    from .plugins import get_manager

    manager = get_manager(job.settings.plugins)
    case = Case.from_dict(job.case)
    with torch_threads(case.threads):
        record = manager.hook.bench_run_case(case=case, context=job)
    if record.get("case_dir"):  # wrappers may have changed the record: the file holds the final one
        write_record(Path(record["case_dir"]), record)
    return record


def write_record(case_dir: Path, record: dict[str, Any]) -> None:
    """The case's record.json, atomically; secret-looking values redacted (:mod:`bench.redact`)."""
    tmp = case_dir / "record.json.tmp"
    tmp.write_text(json.dumps(redact_secrets(record), indent=1, default=_jsonable))
    os.replace(tmp, case_dir / "record.json")


_DATASETS: dict[str, Any] = {}


class _Deadline:
    def __init__(self, timeout_s: float | None):
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s

    def check(self, where: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExceeded(f"time budget exceeded: timeout_s={self.timeout_s:g} s, during {where}")


@dataclass
class CaseRunner:
    case: Case
    job: CaseJob
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from .plugins import get_manager

        self.manager = get_manager(self.job.settings.plugins)
        self.regs = self.manager.registries
        self.store = Store(self.job.settings.store)
        self.dir = Path(self.job.settings.results_dir) / "cases" / case_slug(self.case.id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.deadline = _Deadline(self.case.budget.get("timeout_s"))
        self.trained = False
        self.resumed: dict[str, Any] | None = None  # the saved training state this case started from
        self.skipped = dict(self.case.skipped_metrics)

    # ------------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        self.notes.append(message)

    def progress(self, iterable, desc: str = "", total: int | None = None):
        if self.job.settings.quiet:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=0.5, dynamic_ncols=True)

    # ------------------------------------------------------------------ phases
    def load_dataset(self):
        key = content_key(self.case.dataset, self.case.seed)
        if key not in _DATASETS:
            ctx = BuildContext.from_registries(self.regs, seed=self.case.seed, store=self.store,
                                               progress=self.progress, log=self.log)
            with self.timer.phase("data"):
                _DATASETS[key] = self.regs.dataset.create(self.case.dataset, context=ctx)
        return _DATASETS[key]

    def phase(self, name: str) -> None:
        """Note the phase in the case directory: a watchdog that kills the case reads it."""
        (self.dir / "phase.txt").write_text(name)

    def train_or_load(self, family: torch.nn.Module, dataset) -> None:
        trainable = getattr(family, "trainable", True) and any(p.requires_grad for p in family.parameters())
        if not trainable or self.case.train["steps"] == 0:
            self.log("family is not trained (trainable=False or train.steps=0)")
            return
        key = self.case.train_key
        self.metrics["num_params"] = float(sum(p.numel() for p in family.parameters()))
        with self.store.lock("checkpoints", key):
            state = self._load(family, key)
            if state is None:
                earlier = trainer.earlier_failure(self.store, key, self.case.budget.get("timeout_s"))
                if earlier is not None:
                    raise trainer.TrainingFailedBefore(earlier)
                self.trained = True
                self.phase("training")
                progress = train_state.Progress(self.store, key, self.case.lineage_key, self.case.train["steps"],
                                                self.log)
                start = self._training_start(progress, family)
                try:
                    with self.timer.phase("train"):
                        state = trainer.train(family, dataset, self.case.train, self.case.seed, self.progress,
                                              self.deadline.check, desc=f"train {label(self.case.family)}",
                                              device=self.case.device, precision=self.case.precision,
                                              start=start, save=progress.save)
                except BaseException as exc:
                    if not signals.received():
                        trainer.record_failure(self.store, key, _error_line(exc), self.case.budget.get("timeout_s"))
                    saved = progress.newest_step()
                    if saved is not None:
                        self.log(f"training state saved at step {saved} of {self.case.train['steps']}: "
                                 "`bench run` again resumes from it")
                    raise
                trainer.clear_failures(self.store, [key])  # a resumable failure, now finished
                parent = self.resumed["train_key"] if self.resumed and self.resumed["train_key"] != key else None
                self.store.put("checkpoints", key, lambda d: torch.save(state, d / "checkpoint.pt"),
                               meta={"case": self.case.id, "train": self.case.train, "parent": parent,
                                     "resumed_from_step": self.resumed["step"] if self.resumed else None})
                family.load_state_dict(state["ema_state"] if state.get("ema_state") else state["state"])
        self.metrics["train_time_s"] = float(state["train_time_s"])
        self.metrics["final_loss"] = float(state["loss_curve"][-1][1]) if state["loss_curve"] else math.nan
        self.series["train_loss"] = [tuple(x) for x in state["loss_curve"]]

    def _training_start(self, progress: train_state.Progress, family: torch.nn.Module) -> train_state.Start | None:
        """The saved state this training continues from (its own, after an interruption, or its
        parent's, a finished shorter training of its lineage), or None; noted in the record."""
        start = progress.start(family, with_ema=self.case.train["ema"] > 0)
        if start is None:
            return None
        self.resumed = {"step": start.step, "train_key": start.train_key}
        whose = "its own saved state" if start.train_key == self.case.train_key else \
            f"the finished {start.step}-step training {start.train_key[:12]} (its parent)"
        self.log(f"training resumed from step {start.step} ({whose})")
        return start

    def _load(self, family: torch.nn.Module, key: str) -> dict[str, Any] | None:
        """The stored checkpoint loaded into ``family``, or None. One that fails to load for any
        reason (unreadable, unsafe, wrong keys or shapes) is evicted, so that it is retrained once."""
        entry = self.store.get("checkpoints", key)
        if entry is None:
            return None
        try:
            return trainer.load_checkpoint(entry / "checkpoint.pt", family)
        except Exception as exc:  # never use it, never fail on it: rebuild
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.log(f"checkpoint {key[:12]} could not be loaded ({type(exc).__name__}: {reason}); "
                     "evicted and retraining")
            self.store.remove("checkpoints", key)
            return None

    def sample(self, family, sampler, n: int, start_index: int = 0, stream: str = "sample",
               consume: Callable[[torch.Tensor], None] | None = None) -> SampleOutput:
        """``n`` samples drawn on the case's device, under autocast for bf16/fp16 (returned in float32
        on the CPU, where metrics read them); the time is the device's (:class:`DeviceClock`). Sample
        ``i`` draws from the stream of (sample seed, ``stream``, ``i``): the training seed plays no part.
        With ``consume``, each batch goes to ``consume`` (float32, CPU) as soon as it is drawn, nothing
        is held (``samples`` is None), and the time ``consume`` takes is not sampling time."""
        bs = self.case.eval["batch_size"]
        device = self.case.device
        limit = self.case.budget.get("max_nfe")

        def exceeded(calls: int) -> None:
            raise BudgetExceeded(f"NFE budget of {limit} exceeded ({calls} network calls in one batch)")

        self.phase(stream if stream == "sample" else "metrics")
        counter = NFECounter(limit, exceeded)
        deadline = self.deadline
        outs, batches = [], 0
        grad = bool(getattr(sampler, "needs_grad", False))
        modules = list(family.nfe_modules())
        check = [m.register_forward_pre_hook(lambda *_: deadline.check("sampling")) for m in modules[:1]]
        clock = DeviceClock(device)
        seconds = 0.0
        try:
            clock.start()
            for rng in sample_batches(self.case.sample_seed, start_index, n, bs, stream, device=device):
                with counter.attached(modules), torch.set_grad_enabled(grad):
                    counter.new_batch()
                    with autocast(device, self.case.precision):
                        x = sampler.sample(family, rng)
                batches += 1
                if consume is None:
                    outs.append(x.detach())
                    continue
                # the metrics' share runs as metrics do after sampling: in the caller's grad mode (an
                # extractor may train a classifier on first use) and uncounted by the NFE counter
                seconds += clock.stop()
                consume(_cpu_float32(x.detach()))
                clock.start()
            seconds += clock.stop()
        finally:
            for h in check:
                h.remove()
        if consume is not None:
            return SampleOutput(None, seconds, counter.calls / max(batches, 1))
        samples = torch.cat(outs)
        if samples.dtype in (torch.float16, torch.bfloat16):
            samples = samples.float()
        samples = samples.cpu()  # once per sampling, for the metrics (a no-op on the CPU)
        return SampleOutput(samples, seconds, counter.calls / max(batches, 1))

    def build_metrics(self, ctx: BuildContext) -> dict[str, Any]:
        """Build every metric before training, so a bad metric setup (say, a missing weights file)
        fails the case at once instead of after the training it would have wasted."""
        with self.timer.phase("build"):
            return {label(spec): self.regs.metric.create(spec, context=ctx)
                    for spec in self.case.metrics if label(spec) not in self.skipped}

    def metric_contexts(self, family, sampler, dataset, ctx: BuildContext) -> dict[str, MetricContext]:
        """One :class:`MetricContext` per active metric, made before sampling (streaming metrics get
        the chunks with it) and sharing ``shared``; samples, timings and NFE are filled in later."""
        def resample(n: int) -> SampleOutput:
            if sampler is None:
                raise MetricSkipped("the case has no sampler")
            return self.sample(family, sampler, n, start_index=10**9, stream="timing")

        mdir = self.dir / "artifacts"
        mdir.mkdir(exist_ok=True)
        shared: dict[Any, Any] = {}
        return {label(spec): MetricContext(None, dataset, family, sampler,
                                           {k: v for k, v in spec.items() if k not in ("name", "id")},
                                           self.case.sample_seed, self.store, mdir, ctx, resample,
                                           case_config=self.case.config(), shared=shared)
                for spec in self.case.metrics if label(spec) not in self.skipped}

    def run_metrics(self, family, sampler, dataset, samples, ctx: BuildContext, metrics: dict[str, Any],
                    contexts: dict[str, MetricContext] | None = None) -> None:
        contexts = contexts or self.metric_contexts(family, sampler, dataset, ctx)
        for spec in self.case.metrics:
            name = label(spec)
            if name in self.skipped:
                continue
            self.deadline.check(f"metric {name}")
            self.phase(f"metric {name}")
            metric = metrics[name]
            mctx = contexts[name]
            if mctx.num_samples is None or not callable(getattr(metric, "accumulate", None)):
                mctx.samples = samples
            mctx.timings, mctx.nfe = dict(self.timer.seconds), self.metrics.get("nfe")
            try:
                with self.timer.phase(f"metric:{name}"):
                    values = metric.compute(mctx)
            except MetricSkipped as exc:
                self.skipped[name] = str(exc) or "not applicable"
                continue
            for k, v in (values or {}).items():
                self.metrics[k] = float(v)

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        case = self.case
        record: dict[str, Any] = {"case_id": case.id, "case_hash": case.hash, "train_key": case.train_key,
                                  "sample_seed": case.sample_seed,
                                  "status": "running", "labels": case.labels(), "config": case.config(), "versions": case.versions,
                                  "device": case.device, "precision": case.precision, "started": time.time()}
        (self.dir / "case.yaml").write_text(dump_yaml(redact_secrets({"id": case.id, "hash": case.hash,
                                                                      **case.config()})))
        torch.manual_seed(derive_seed(case.seed, "torch-global"))
        try:
            with tf32(case.device, case.tf32):
                self._run(case)
            record["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - a failing case must not stop the suite
            if signals.received() and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                record["status"] = "killed"
                record["error"] = "interrupted"
                self._finish(record)
                raise
            record["status"] = "failed"  # sys.exit() or a KeyboardInterrupt raised by a component included
            record["error"] = _error_line(exc)
            (self.dir / "traceback.txt").write_text(traceback.format_exc())
            self.artifacts.append("traceback.txt")
        return self._finish(record)

    def _run(self, case: Case) -> None:
        """The phases of :meth:`run` on the case's device (the network is moved there after building)."""
        dataset = self.load_dataset()
        ctx = BuildContext.from_registries(self.regs, seed=case.seed, store=self.store, dataset=dataset,
                                           progress=self.progress, log=self.log, device=case.device,
                                           precision=case.precision)
        with self.timer.phase("build"):
            family = self.regs.family.create(case.family, context=ctx)
            if isinstance(family, torch.nn.Module):
                family = family.to(case.device)
            sampler = None if case.sampler is None else self.regs.sampler.create(case.sampler, context=ctx)
        metrics = self.build_metrics(ctx)
        self.train_or_load(family, dataset)
        family.eval()
        self._describe(family, "family")
        contexts = self.metric_contexts(family, sampler, dataset, ctx)
        samples = None
        if sampler is not None or case.eval.get("samples_from"):
            samples = self.evaluate_samples(family, sampler, dataset, metrics, contexts)
        self.run_metrics(family, sampler, dataset, samples, ctx, metrics, contexts)

    def evaluate_samples(self, family, sampler, dataset, metrics: dict[str, Any],
                         contexts: dict[str, MetricContext]) -> torch.Tensor | None:
        """Draw the case's samples in chunks (or read them from ``eval.samples_from``) into a
        :class:`SampleSink`: streaming metrics accumulate, ``eval.save_samples`` writes them, and the
        whole tensor is held (and returned) only when a metric without a streaming form gets it."""
        case, n = self.case, self.case.eval["num_samples"]
        sink = self._sink(metrics, contexts, dataset, n)
        source = case.eval.get("samples_from")
        try:
            if source:
                sampling = self._replay(source, n, sink)
            else:
                out = self.sample(family, sampler, n, consume=sink)
                self._describe(sampler, "sampler")  # after sampling: samplers may report what they did
                sampling = {"sample_time_s": out.seconds, "nfe": out.nfe,
                            "samples_per_s": sink.count / max(out.seconds, 1e-12)}
                if out.nfe:
                    sampling["ms_per_nfe"] = 1000 * out.seconds / (out.nfe * math.ceil(n / case.eval["batch_size"]))
                if getattr(sampler, "steps", None) is not None:
                    sampling["steps"] = float(sampler.steps)
            sink.finish()
        except BaseException:
            if sink.writer is not None:
                sink.writer.abort()
            raise
        if sink.writer is not None:
            path = sink.writer.close({"case_id": case.id, "case_hash": case.hash, "sampling": sampling})
            self.log(f"samples saved to {path} ({sink.writer.encoding})")
        self.timer.seconds["sample"] = sampling.get("sample_time_s", 0.0)
        self.metrics.update({**sampling, "num_samples": float(sink.count)})
        self._grid(sink.first(), dataset)
        return sink.samples()

    def _sink(self, metrics: dict[str, Any], contexts: dict[str, MetricContext], dataset, n: int) -> SampleSink:
        """The sink for ``n`` samples: which metrics stream, which get the held tensor, which are skipped."""
        ev = self.case.eval
        hold_limit = ev.get("hold_samples", EvalConfig.model_fields["hold_samples"].default)
        streaming, hold = [], False
        for name, mctx in contexts.items():
            metric = metrics[name]
            if callable(getattr(metric, "accumulate", None)):
                mctx.num_samples = n
                streaming.append((name, metric, mctx))
            elif n <= hold_limit or getattr(metric, "needs_samples", False):
                hold = True
            else:
                self.skipped[name] = (f"needs all {n} samples in memory and has no streaming form: raise "
                                      f"eval.hold_samples (now {hold_limit}) or set needs_samples on the metric")
        grid = ev["grid"]
        head = max(grid, 2000) if grid and dataset.info.modality == "points" else grid
        writer = None
        if ev.get("save_samples"):
            writer = SampleWriter(self.dir, samplefile.encoding_for(ev["save_samples"], dataset.info.levels),
                                  dataset.info.levels)
        return SampleSink(hold=hold, head=head, writer=writer, streaming=streaming, timed=self.timer.phase,
                          on_skip=lambda name, reason: self.skipped.__setitem__(name, reason))

    def _replay(self, source: str, n: int, sink: SampleSink) -> dict[str, float]:
        """Feed the first ``n`` saved samples of ``source`` to ``sink``; the sampling numbers saved with them."""
        meta = samplefile.read_meta(source)
        if meta["num_samples"] < n:
            raise UserError(f"eval.samples_from: {source} holds {meta['num_samples']} samples, the case needs {n}")
        self.phase("sample")
        for x in samplefile.read_chunks(source, n):
            sink(x)
        self.log(f"samples read from {samplefile.resolve(source)} (saved by case {meta.get('case_id')}, "
                 f"{meta['encoding']}); the sampler was not called")
        return {k: float(v) for k, v in meta.get("sampling", {}).items() if v is not None}

    def _describe(self, obj, what: str) -> None:
        if hasattr(obj, "describe"):
            try:
                desc = obj.describe()
            except Exception as exc:  # provenance must not fail a case, but the failure is shown on the console
                desc = {"error": f"describe() failed: {exc}"}
                self.warnings.append(f"{what}.describe() failed ({type(exc).__name__}: {exc}); "
                                     f"{what}.json records only the error")
            path = self.dir / f"{what}.json"
            path.write_text(json.dumps(desc, indent=1, default=_jsonable))
            self.artifacts.append(path.name)

    def _grid(self, samples: torch.Tensor | None, dataset) -> None:
        n = self.case.eval["grid"]
        if n <= 0 or samples is None:
            return
        try:
            reference = dataset.split("test")
        except Exception:
            reference = None
        path = self.dir / "samples.png"
        if plots.sample_figure(samples[:max(n, 2000) if dataset.info.modality == "points" else n],
                               dataset.info, path, reference=reference, title=self.case.id):
            self.artifacts.append(path.name)

    def _finish(self, record: dict[str, Any]) -> dict[str, Any]:
        record["finished"] = time.time()
        self.metrics["peak_rss_mb"] = peak_rss_mb()
        gpu_mb = peak_gpu_mem_mb(self.case.device)
        if gpu_mb is not None:
            self.metrics["peak_gpu_mem_mb"] = gpu_mb
        for phase, secs in self.timer.seconds.items():
            if phase.startswith("metric:"):
                self.metrics["metric_time_s"] = self.metrics.get("metric_time_s", 0.0) + secs
            key = "".join(c if c.isalnum() else "_" for c in phase)
            self.metrics[f"time_{key}_s"] = secs
        record.update({"metrics": {k: v for k, v in self.metrics.items()},
                       "series": self.series, "timings": self.timer.seconds, "trained": self.trained,
                       **({"train_resumed": self.resumed} if self.resumed else {}),
                       "skipped_metrics": self.skipped, "notes": self.notes, "warnings": self.warnings, "pid": os.getpid(),
                       "threads": torch.get_num_threads()})
        if self.series.get("train_loss") and record["status"] != "killed":  # a stopping run must not wait on plots
            path = self.dir / "loss.png"
            with contextlib.suppress(Exception):
                plots.loss_curve(self.series["train_loss"], path, self.case.id)
                self.artifacts.append(path.name)
        (self.dir / "metrics.json").write_text(json.dumps(record["metrics"], indent=1, default=_jsonable))
        adir = self.dir / "artifacts"
        extra = [f"artifacts/{p.name}" for p in sorted(adir.iterdir())] if adir.exists() else []
        record["artifacts"] = ["case.yaml", "metrics.json", *self.artifacts, *extra]
        record["case_dir"] = str(self.dir)
        write_record(self.dir, record)
        return record


def _cpu_float32(x: torch.Tensor) -> torch.Tensor:
    """A batch as metrics read it: float32 (from bf16/fp16) on the CPU."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.cpu()


def _error_line(exc: BaseException) -> str:
    """The record's one-line error: ``Type: message`` (a failure met earlier keeps its own line)."""
    if isinstance(exc, trainer.TrainingFailedBefore):
        return exc.error[:500]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
