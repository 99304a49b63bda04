"""Suites: schema, ``include:``, ``--set`` overrides, matrix expansion, case ids and hashes.

A suite is parsed with ``yaml.safe_load`` semantics (see :mod:`bench.yamlload`), merged with the
suites it includes (local keys win; cycles are errors), validated by pydantic, and expanded into
:class:`Case` objects. Incompatible combinations (a sampler that requires a capability the family
does not provide, a family that does not handle the dataset's modality) are pruned here, before
anything runs, and reported by ``--dry-run``.

Validation reports every problem in one run (docs/suites.md, "Validation"): past the YAML, ``include:``
and ``--set`` stages (where the first error stops), each error is recorded in an
:class:`~bench.errors.ErrorCollector` and checking goes on with the next key or entry; the bad entry
is left out, and :func:`load_suite` raises them all together at the end.
"""
from __future__ import annotations

import copy
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer

from .errors import (ErrorCollector, Location, SuiteError, SuiteErrors, UnknownComponentError, UserError,
                     did_you_mean)
from .names import name_problem
from .registry import Registries, label
from .store import content_key
from .yamlload import Positions, load_yaml_file, load_yaml_text, locate

NAME_RE = r"^[A-Za-z0-9_.\-]+$"

# ----------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Strict):
    """Training: ``steps`` optimiser steps of Adam on minibatches, with an EMA of the weights."""

    steps: Annotated[int, Field(ge=0)] = 1000
    batch_size: Annotated[int, Field(gt=0)] = 128
    lr: Annotated[float, Field(gt=0)] = 2e-4
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.999
    grad_clip: Optional[Annotated[float, Field(gt=0)]] = 1.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup: Annotated[int, Field(ge=0)] = 0
    log_every: Optional[Annotated[int, Field(gt=0)]] = None
    num_workers: Annotated[int, Field(ge=0)] = 0
    checkpoint_every: Optional[Annotated[int, Field(gt=0)]] = None


#: train settings that change how a training runs, never the trained weights (bench.batches,
#: bench.train_state): absent from a case's train section at their defaults (so the hashes of suites
#: that do not set them are those from before they existed) and never hashed (case hash, train key)
UNHASHED_TRAIN_KEYS = {"num_workers": 0, "checkpoint_every": None}


def hashed_train(train: dict[str, Any]) -> dict[str, Any]:
    """The train section as it enters the case hash and the training key."""
    return {k: v for k, v in train.items() if k not in UNHASHED_TRAIN_KEYS}


def _existing_file(path: str) -> str:
    if not Path(path).expanduser().is_file():
        raise ValueError(f"no such file: {path}")
    return path


class EvalConfig(_Strict):
    """Evaluation: how many samples, in what batches, and how many go into the sample grid; whether
    the samples are saved (``save_samples``: true, ``uint8`` or ``float32``) or read back from a saved
    file (``samples_from``), and up to how many are held in memory for metrics without a streaming
    form (``hold_samples``; docs/metrics.md, "Metrics at full size")."""

    num_samples: Annotated[int, Field(gt=0)] = 1000
    batch_size: Annotated[int, Field(gt=0)] = 500
    grid: Annotated[int, Field(ge=0)] = 64
    save_samples: Union[bool, Literal["uint8", "float32"]] = False
    samples_from: Optional[Annotated[str, AfterValidator(_existing_file)]] = None
    hold_samples: Annotated[int, Field(ge=0)] = 10000

    @model_serializer(mode="wrap")
    def _omit_defaults_of_later_keys(self, handler):
        """The keys added after the first three appear only when set, so that the case hashes of
        suites that do not set them stay those from before they existed."""
        out = handler(self)
        for key in ("save_samples", "samples_from", "hold_samples"):
            if key in out and out[key] == type(self).model_fields[key].default:
                del out[key]
        return out


class BudgetConfig(_Strict):
    """Per-case budgets: a case past either fails (the suite goes on)."""

    timeout_s: Optional[Annotated[float, Field(gt=0)]] = None
    max_nfe: Optional[Annotated[int, Field(gt=0)]] = None


class ResourcesConfig(_Strict):
    """What one case occupies while it runs (scheduling only, not hashed): ``cpus`` cores (the process
    executor fits ``cores // cpus`` workers; Ray's ``num_cpus``; a case's ``threads`` default) and
    ``gpus`` (Ray's ``num_gpus``, fractions allowed; default 1 for a case on CUDA, else 0)."""

    cpus: Optional[Annotated[int, Field(gt=0)]] = None
    gpus: Optional[Annotated[float, Field(ge=0)]] = None


Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
Precision = Literal["fp32", "bf16", "fp16"]


class Defaults(_Strict):
    seeds: Any = None  # training seeds: a count or a list (checked by seed_list, to give one line)
    sample_seeds: Any = None  # sampling seeds: likewise; None: each case samples with its training seed
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()
    device: Optional[Device] = None  # None: auto (bench.device)
    precision: Precision = "fp32"
    tf32: Optional[bool] = None
    threads: Optional[Annotated[int, Field(gt=0)]] = None  # None: resources.cpus, else 1 (bench.device)


class TrackingConfig(_Strict):
    experiment: Optional[Annotated[str, Field(min_length=1)]] = None
    uri: Optional[str] = None


Spec = Union[str, dict[str, Any]]

#: the per-case settings a suite's ``defaults`` holds and a matrix entry may override (``--set train.x``
#: is shorthand for ``defaults.train.x``)
CASE_SECTIONS = ("train", "eval", "budget", "resources")
#: the key of a dataset matrix entry that overrides metric parameters on that dataset:
#: ``metric_params: {fid: {extractor: random-proj}}`` (metric name or id -> parameters)
METRIC_PARAMS = "metric_params"
#: where, in what precision and on how many torch threads a case runs (bench.device): scalars a matrix
#: entry may override too; ``--set device=...`` sets them everywhere
RUN_KEYS = ("device", "precision", "tf32", "threads")
#: keys of a ``network`` spec that bench handles itself, not the network's factory (bench.device)
NETWORK_KEYS = ("compile",)
#: the seed axes a suite's ``defaults`` holds and a dataset or family matrix entry may override:
#: ``seeds`` (training seeds) and ``sample_seeds`` (sampling seeds), each a count N (seeds 0..N-1) or
#: a list; ``--set seeds=3`` sets the default and every entry's
SEED_KEYS = ("seeds", "sample_seeds")
MAX_SEEDS = 10_000  # per seed axis: a larger count is a typo, not a plan


class Matrix(_Strict):
    dataset: Annotated[list[Spec], Field(min_length=1)]
    family: Annotated[list[Spec], Field(min_length=1)]
    sampler: Optional[list[Optional[Spec]]] = None
    seed: Optional[Annotated[list[int], Field(min_length=1)]] = None


class SuiteModel(_Strict):
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    seed: int = 0
    include: Union[str, list[str], None] = None
    tracking: TrackingConfig = TrackingConfig()
    store: str = ".bench-store"
    results: str = "results"
    defaults: Defaults = Defaults()
    matrix: Matrix
    metrics: list[Spec] = []
    exclude: list[dict[str, Any]] = []
    include_cases: list[dict[str, Any]] = []


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One (dataset, family, sampler, seed, sample_seed) combination with everything resolved.

    ``seed`` drives the data, the initialisation and training; ``sample_seed`` every draw after
    training (samples, metric randomness). It defaults to ``seed``, and only a sample seed that
    differs from it enters the id, the labels and the config (so cases without one keep theirs)."""

    suite: str
    dataset: dict[str, Any]
    family: dict[str, Any]
    sampler: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    train: dict[str, Any]
    eval: dict[str, Any]
    budget: dict[str, Any]
    seed: int
    versions: dict[str, str] = field(default_factory=dict)
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"  # resolved (bench.device): provenance, not hashed
    precision: str = "fp32"
    tf32: bool | None = None
    threads: int = 1  # torch intra-op threads: hashed (they change float reductions)
    resources: dict[str, Any] = field(default_factory=dict)  # scheduling only, not hashed
    sample_seed: int | None = None  # None: the training seed

    def __post_init__(self) -> None:
        if self.sample_seed is None:
            self.sample_seed = self.seed

    def _own_sample_seed(self) -> dict[str, int]:
        """``{"sample_seed": N}`` when the case samples with another seed than it trained with, else {}."""
        return {} if self.sample_seed == self.seed else {"sample_seed": self.sample_seed}

    @property
    def id(self) -> str:
        labels = self.labels()
        parts = [self.suite, labels["dataset"], labels["family"], labels["sampler"], f"seed={self.seed}"]
        return "/".join(parts + [f"{k}={v}" for k, v in self._own_sample_seed().items()])

    def labels(self) -> dict[str, str]:
        """Short names of the axes: the spec's ``id`` or ``name[params the user set]``."""
        return {"dataset": label(self.dataset), "family": label(self.family),
                "sampler": label(self.sampler) if self.sampler else "no-sampler", "seed": str(self.seed),
                **{k: str(v) for k, v in self._own_sample_seed().items()}}

    def config(self) -> dict[str, Any]:
        """The resolved case config: what is hashed (less ``UNHASHED_TRAIN_KEYS``), logged as params
        and written as YAML; an unhashed train key appears only when set."""
        train = {k: v for k, v in self.train.items() if k not in UNHASHED_TRAIN_KEYS or v != UNHASHED_TRAIN_KEYS[k]}
        return {"dataset": self.dataset, "family": self.family, "sampler": self.sampler,
                "metrics": self.metrics, "train": train, "eval": self.eval,
                "budget": self.budget, "seed": self.seed, **self._own_sample_seed(), **self.numerics()}

    def numerics(self) -> dict[str, Any]:
        """The torch thread count, and precision and TF32 where they differ from the defaults (fp32,
        torch's TF32 setting): they change results, so they are hashed; precision and TF32 at their
        defaults are absent, so that they leave hashes as they were before they existed. The thread
        count is always present (it used to depend on the executor and the machine: results with an
        unknown thread count must not share a hash). The device is not hashed."""
        out: dict[str, Any] = {"threads": self.threads}
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.tf32 is not None:
            out["tf32"] = self.tf32
        return out

    @property
    def hash(self) -> str:
        return content_key("case", {**self.config(), "train": hashed_train(self.train)}, self.versions)[:16]

    @property
    def train_key(self) -> str:
        """Training depends on dataset, family (with noise, schedule, network), train and seed only:
        cases that differ in sampler, metrics or sample seed share it (train once, sample many)."""
        return content_key("train", *self._training_inputs(hashed_train(self.train)))

    @property
    def lineage_key(self) -> str:
        """Shared by trainings that differ only in ``steps``: a longer one continues a shorter one
        (bench.train_state)."""
        return content_key("lineage", *self._training_inputs(
            {k: v for k, v in hashed_train(self.train).items() if k != "steps"}))

    def _training_inputs(self, train: dict[str, Any]) -> tuple:
        return (self.dataset, self.family, train, self.seed,
                {k: v for k, v in self.versions.items() if k.startswith(("dataset:", "family:"))},
                self.numerics())

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, **self.config(), "versions": self.versions,
                "skipped_metrics": self.skipped_metrics, "device": self.device, "precision": self.precision,
                "resources": self.resources}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Case":
        return cls(suite=d["suite"], dataset=d["dataset"], family=d["family"], sampler=d["sampler"],
                   metrics=d["metrics"], train=d["train"], eval=d["eval"], budget=d["budget"],
                   seed=d["seed"], versions=d.get("versions", {}),
                   skipped_metrics=d.get("skipped_metrics", {}), device=d.get("device", "cpu"),
                   precision=d.get("precision", "fp32"), tf32=d.get("tf32"), threads=d.get("threads", 1),
                   resources=d.get("resources") or {}, sample_seed=d.get("sample_seed"))


@dataclass
class Pruned:
    dataset: str
    family: str
    sampler: str
    seed: int
    reason: str


@dataclass
class ExpandedSuite:
    name: str
    description: str
    path: str
    raw: dict[str, Any]
    cases: list[Case]
    pruned: list[Pruned]
    tracking: dict[str, Any]
    store: str
    results: str


# ----------------------------------------------------------------------------- loading


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def _load_with_includes(path: Path, stack: tuple[Path, ...]) -> tuple[dict, Positions]:
    data, positions = load_yaml_file(path)
    if data is None:
        raise SuiteError("the suite file is empty", Location(str(path), 1, 1),
                         hint="a suite needs at least 'name' and 'matrix'")
    if not isinstance(data, dict):
        raise SuiteError(f"a suite must be a mapping of keys, not a {type(data).__name__}",
                         Location(str(path), 1, 1))
    includes = data.get("include")
    if includes is None:
        return data, positions
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError("'include' must be a file name or a list of file names",
                         locate(positions, ("include",)))
    merged: dict = {}
    merged_pos: Positions = {}
    for i, inc in enumerate(includes):
        loc = locate(positions, ("include", i) if isinstance(data["include"], list) else ("include",))
        try:
            inc_path = (path.parent / inc).resolve()
            found = inc_path.is_file()
        except (OSError, ValueError) as exc:  # a name the file system refuses (too long, NUL)
            shown = inc if len(inc) <= 80 else inc[:60] + f"... ({len(inc):,} characters)"
            raise SuiteError(f"included file cannot be opened: {shown} ({type(exc).__name__})", loc) from None
        if inc_path in stack or inc_path == path.resolve():
            chain = " -> ".join(p.name for p in (*stack, inc_path))
            raise SuiteError(f"include cycle: {chain}", loc)
        if not found:
            raise SuiteError(f"included file not found: {inc}", loc)
        sub, sub_pos = _load_with_includes(inc_path, stack + (inc_path,))
        merged = _deep_merge(merged, sub)
        merged_pos.update(sub_pos)
    data = _deep_merge(merged, {k: v for k, v in data.items() if k != "include"})
    merged_pos.update(positions)
    return data, merged_pos


_SET_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*)=(.*)$", re.S)


def apply_overrides(data: dict, positions: Positions, overrides: list[str]) -> None:
    """Apply ``--set a.b.c=value`` (value parsed as YAML). ``train.*``, ``eval.*`` and ``budget.*``
    are shorthand for ``defaults.train.*`` etc. Also sets the key in every matrix entry that already
    overrides it, so ``--set train.steps=100`` really caps every case."""
    for item in overrides:
        m = _SET_RE.match(item)
        if not m:
            raise SuiteError(f"--set expects key=value, got '{item}'", Location("--set"))
        key, raw_value = m.groups()
        try:
            value, _ = load_yaml_text(raw_value, "--set")
        except SuiteError as exc:
            raise SuiteError(f"--set {key}: {exc.message}", Location("--set")) from None
        parts = key.split(".")
        if parts == [parts[0]] and parts[0] in RUN_KEYS + SEED_KEYS:  # everywhere: defaults and every matrix entry
            for axis in ("dataset", "family", "sampler"):
                for entry in (data.get("matrix") or {}).get(axis) or []:
                    if isinstance(entry, dict) and parts[0] in entry:
                        entry[parts[0]] = value
            parts = ["defaults"] + parts
        if parts[0] in CASE_SECTIONS:
            parts = ["defaults"] + parts
            for axis in ("dataset", "family", "sampler"):
                for entry in (data.get("matrix") or {}).get(axis) or []:
                    section = entry.get(parts[1]) if isinstance(entry, dict) else None
                    if isinstance(section, dict) and len(parts) == 3 and parts[2] in section:
                        section[parts[2]] = value
        node = data
        for p in parts[:-1]:
            if not isinstance(node, dict):
                raise SuiteError(f"--set {key}: '{p}' is not a mapping", Location("--set"))
            node = node.setdefault(p, {})
            if node is None:
                node = {}
        if not isinstance(node, dict):
            raise SuiteError(f"--set {key}: parent is not a mapping", Location("--set"))
        node[parts[-1]] = value
        positions[tuple(parts)] = Location("--set")


def _validation_error(exc: pydantic.ValidationError, positions: Positions, prefix: tuple,
                      model: type[BaseModel] | None = None) -> SuiteError:
    """Every problem pydantic found, each located in the suite file: one :class:`SuiteError`, or a
    :class:`SuiteErrors` when there are several."""
    errors = [_one_validation_error(err, positions, prefix, model) for err in exc.errors()]
    return errors[0] if len(errors) == 1 else SuiteErrors(errors)


def _error_path(err: dict) -> tuple:
    # pydantic prepends union branch names to the loc of union members; drop them
    return tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))


def _one_validation_error(err: dict, positions: Positions, prefix: tuple,
                          model: type[BaseModel] | None) -> SuiteError:
    loc = _error_path(err)
    path = prefix + loc
    dotted = ".".join(str(p) for p in path) or "suite"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1]) if model else []
        suggestion = did_you_mean(str(loc[-1]), allowed)
        hint = f"did you mean '{suggestion}'?" if suggestion else (
            f"allowed: {', '.join(allowed)}" if allowed else None)
        location = positions.get(path + ("__key__",)) or locate(positions, path)
        return SuiteError(f"unknown key '{loc[-1]}' in {'.'.join(map(str, path[:-1])) or 'suite'}",
                          location, hint)
    if kind == "missing":
        return SuiteError(f"missing required key '{dotted}'", locate(positions, path[:-1]))
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if len(shown) > 80:  # one readable line, whatever the value
        shown = shown[:60] + f"... ({len(shown):,} characters)"
    msg = err["msg"]
    return SuiteError(f"{dotted}: {msg[:1].lower() + msg[1:]} (got {shown})", locate(positions, path))


def _validate_suite(data: dict, positions: Positions, errors: ErrorCollector) -> tuple[SuiteModel | None, dict]:
    """Validate the suite's own schema, recording every problem. To go on and check the components
    too, each offending key is dropped (its default applies) and the rest validated again; returns
    ``(None, data)`` when a required key is missing or wrong, since nothing can be expanded then."""
    for _ in range(3):  # the errors of a pass are independent: one repair pass almost always suffices
        try:
            return SuiteModel.model_validate(data), data
        except pydantic.ValidationError as exc:
            errors.add(_validation_error(exc, positions, (), SuiteModel))
            repaired = copy.deepcopy(data)
            for err in exc.errors():
                if err["type"] == "missing" or not _drop(repaired, _error_path(err)):
                    return None, data
            data = repaired
    return None, data


def _drop(data: dict, path: tuple) -> bool:
    """Delete the innermost mapping key on ``path`` from ``data``; False when there is none or it is
    a required key of the suite (name, matrix and its dataset and family axes)."""
    keys = [i for i, p in enumerate(path) if isinstance(p, str)]
    if not keys:
        return False
    path = path[: keys[-1] + 1]
    if path in (("name",), ("matrix",), ("matrix", "dataset"), ("matrix", "family")):
        return False
    node: Any = data
    for p in path[:-1]:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def _allowed_fields(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    for part in loc:
        if model is None:
            return []
        f = model.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return []
        ann = f.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


def load_suite(path: str | Path, registries: Registries, versions: dict[str, str] | None = None,
               overrides: list[str] | None = None) -> ExpandedSuite:
    """Load, validate and expand a suite file. Raises :class:`SuiteError` for any user error."""
    path = Path(path)
    data, positions = _load_with_includes(path, (path.resolve(),))
    data = copy.deepcopy(data)
    apply_overrides(data, positions, overrides or [])  # syntax, includes and --set: the first error stops
    errors = ErrorCollector()  # from here on every problem is recorded and the check goes on
    model, data = _validate_suite(data, positions, errors)
    if model is None:
        errors.raise_if_any()
    problem = name_problem(model.name)  # it names a directory: checked before anything is written
    if problem:
        errors.add(SuiteError(f"suite name {problem}", locate(positions, ("name",))))
    suite = expand(model, data, positions, registries, versions or {}, str(path), errors)
    errors.raise_if_any()
    return suite


# ----------------------------------------------------------------------------- expansion



def _normalize_spec(spec: Any, kind: str, path: tuple, positions: Positions) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise SuiteError(f"a {kind} entry needs a 'name'", locate(positions, path))
        if not isinstance(spec["name"], str):
            raise SuiteError(f"{kind} name must be a string", locate(positions, path + ("name",)))
        return dict(spec)
    raise SuiteError(f"a {kind} entry must be a name or a mapping, not {type(spec).__name__}",
                     locate(positions, path))


class _Resolver:
    """Resolves component specs against their registries (:meth:`bench.registry.Registry.resolve`),
    recursively for nested components, and maps errors to the suite file's positions."""

    def __init__(self, registries: Registries, positions: Positions):
        self.regs = registries
        self.positions = positions

    def _networks(self) -> list[str]:
        return self.regs["network"].names()

    def _network_keys(self, spec: dict[str, Any], path: tuple) -> dict[str, Any]:
        """Pop bench's own keys (``NETWORK_KEYS``) from a network spec and check them: ``compile`` is
        true or false (:func:`bench.device.compiled`; false is the same spec as no key)."""
        own = {k: spec.pop(k) for k in NETWORK_KEYS if k in spec}
        if not isinstance(own.get("compile", False), bool):
            raise SuiteError(f"network 'compile' must be true or false (got {own['compile']!r})",
                             locate(self.positions, path + ("compile",)))
        return own

    def resolve(self, kind: str, spec: dict[str, Any], path: tuple) -> dict[str, Any]:
        name = spec["name"]
        try:
            entry = self.regs[kind].entry(name)
        except UnknownComponentError as exc:
            raise exc.with_location(locate(self.positions, path + ("name",)) or locate(self.positions, path))
        if spec.get("id"):  # ids become parts of case ids, labels and artifact names
            problem = name_problem(str(spec["id"]))
            if problem:
                raise SuiteError(f"{kind} id {problem}", locate(self.positions, path + ("id",)))
        params = {k: v for k, v in spec.items() if k not in ("name", "id") + CASE_SECTIONS + RUN_KEYS + SEED_KEYS
                  and not (kind == "dataset" and k == METRIC_PARAMS)}
        own = self._network_keys(params, path) if kind == "network" else {}
        for key, value in list(params.items()):  # a network spec a component builds itself (ddpm's network:)
            if key not in entry.nested() and isinstance(value, dict) and value.get("name") in self._networks():
                sub = dict(value)
                params[key] = {**sub, "compile": True} if self._network_keys(sub, path + (key,)).get("compile") else sub

        def nested(key: str, sub_kind: str, sub_spec: Any) -> dict[str, Any]:
            sub = _normalize_spec(sub_spec, sub_kind, path + (key,), self.positions)
            return self.resolve(sub_kind, sub, path + (key,))

        try:
            resolved = self.regs[kind].resolve(name, params, spec.get("id"), nested)
            return {**resolved, "compile": True} if own.get("compile") else resolved  # absent when off
        except pydantic.ValidationError as exc:  # the factory's parameters name the keys it accepts
            raise _validation_error(exc, self.positions, path, entry.param_model()) from None
        except UserError:  # a nested component's error, already located
            raise
        except Exception as exc:  # a plugin whose factory cannot even be imported
            raise SuiteError(f"{kind} '{name}' (plugin '{entry.plugin}') cannot be loaded: "
                             f"{type(exc).__name__}: {exc}", locate(self.positions, path)) from None


def _section(spec: dict, key: str, model: type[BaseModel], base: dict, path: tuple,
             positions: Positions) -> dict:
    over = spec.get(key)
    if over is None:
        return base
    if not isinstance(over, dict):
        raise SuiteError(f"'{key}' must be a mapping", locate(positions, path + (key,)))
    try:
        return model.model_validate({**base, **over}).model_dump()
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, positions, path + (key,), model) from None


def _matches(rule: dict[str, Any], axes: dict[str, dict | None], seeds: dict[str, int]) -> bool:
    """Whether an exclude rule matches a case: ``seeds`` holds its ``seed`` and ``sample_seed``."""
    for key, want in rule.items():
        if key in seeds:
            if want != seeds[key]:
                return False
            continue
        spec = axes.get(key)
        if spec is None:
            if want is not None:
                return False
            continue
        if isinstance(want, str):
            if want not in (spec["name"], spec.get("id"), label(spec)):
                return False
        elif isinstance(want, dict):
            if any(spec.get(k) != v for k, v in want.items()):
                return False
        else:
            return False
    return True


def _compatibility(regs: Registries, dataset: dict, family: dict, sampler: dict | None) -> str | None:
    d_meta = regs.dataset.entry(dataset["name"]).meta
    f_meta = regs.family.entry(family["name"]).meta
    modality = d_meta.get("modality")
    f_modalities = f_meta.get("modalities")
    if modality and f_modalities and modality not in f_modalities:
        return f"family '{family['name']}' does not model {modality} data"
    if sampler is None:
        return None
    s_meta = regs.sampler.entry(sampler["name"]).meta
    provides = set(f_meta.get("provides", ()))
    missing = set(s_meta.get("requires", ())) - provides
    if missing:
        return (f"sampler '{sampler['name']}' requires {', '.join(sorted(missing))}, "
                f"which family '{family['name']}' does not provide")
    return None


def _metric_skips(regs: Registries, dataset: dict, family: dict, metrics: list[dict]) -> dict[str, str]:
    modality = regs.dataset.entry(dataset["name"]).meta.get("modality")
    provides = set(regs.family.entry(family["name"]).meta.get("provides", ()))
    out = {}
    for m in metrics:
        meta = regs.metric.entry(m["name"]).meta
        mods = meta.get("modalities")
        if modality and mods and modality not in mods:
            out[label(m)] = f"does not apply to {modality} data"
        elif set(meta.get("requires", ())) - provides:
            need = ", ".join(sorted(set(meta["requires"]) - provides))
            out[label(m)] = f"needs {need} from the family"
    return out


def expand(model: SuiteModel, data: dict, positions: Positions, regs: Registries,
           versions: dict[str, str], path: str, errors: ErrorCollector | None = None) -> ExpandedSuite:
    """Resolve every spec once, then build the matrix cases and the ``include_cases``: ids are unique
    (the first case with an id wins), incompatible matrix combinations are pruned. A bad entry is
    recorded in ``errors`` and left out, and expansion goes on with the next one (without a
    collector, the errors are raised together at the end)."""
    own = errors is None
    errors = ErrorCollector() if errors is None else errors
    resolver = _Resolver(regs, positions)
    axes = {kind: _axis(resolver, data["matrix"].get(kind), kind, positions, errors)
            for kind in ("dataset", "family", "sampler")}
    metrics = []
    for i, m in enumerate(data.get("metrics") or []):
        try:
            metrics.append(resolver.resolve("metric", _normalize_spec(m, "metric", ("metrics", i), positions),
                                            ("metrics", i)))
        except UserError as exc:
            errors.add(exc)
    _check_exclude_rules(model.exclude, positions, errors)
    build = _CaseBuilder(model, metrics, regs, versions, positions, resolver)
    pruned: list[Pruned] = []
    unique: dict[str, Case] = {}
    for case in [*_product_cases(model, axes, build, pruned, errors, _suite_seeds(model, positions, errors)),
                 *_include_cases(model, resolver, build, positions, errors)]:
        unique.setdefault(case.id, case)
    if own:
        errors.raise_if_any()
    tracking = {"experiment": model.tracking.experiment or model.name, "uri": model.tracking.uri}
    return ExpandedSuite(model.name, model.description, path, data, list(unique.values()), pruned, tracking,
                         model.store, model.results)


#: one matrix entry: its resolved spec (None for a ``null`` sampler) and its case-section overrides
_AxisEntry = tuple[Optional[dict], dict]


def seed_list(value: Any, what: str, where: Location | None) -> list[int]:
    """The seeds a ``seeds``/``sample_seeds`` value means: a count ``N`` is the seeds ``0..N-1``, a list
    is taken as written (distinct non-negative integers). Anything else is one located error."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        if 1 <= value <= MAX_SEEDS:
            return list(range(value))
        if value > MAX_SEEDS:
            raise SuiteError(f"{what}: {value:,} seeds is more than {MAX_SEEDS:,}", where)
        raise SuiteError(f"{what} must be a positive count or a list of seeds, got {value}", where,
                         f"{what}: 3 means the seeds 0, 1, 2")
    if isinstance(value, list) and value and all(is_int(v) and v >= 0 for v in value):
        if len(value) > MAX_SEEDS:
            raise SuiteError(f"{what}: {len(value):,} seeds is more than {MAX_SEEDS:,}", where)
        repeated = sorted(v for v, k in Counter(value).items() if k > 1)
        if repeated:
            raise SuiteError(f"{what} lists seed {repeated[0]} more than once", where)
        return list(value)
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) <= 60 else type(value).__name__
    raise SuiteError(f"{what} must be a count or a non-empty list of non-negative integers, got {shown}", where,
                     f"{what}: 3 means the seeds 0, 1, 2; or {what}: [0, 5, 9]")


@dataclass
class _SeedAxes:
    """The training and sampling seeds of the cases: the suite's (``defaults.seeds``, else the older
    ``matrix.seed`` list, else the top-level ``seed``), overridden by the dataset entry's, then by the
    family entry's. ``sample`` None: each case samples with its training seed."""

    train: list[int]
    sample: list[int] | None

    def for_entries(self, extras: list[dict]) -> tuple[list[int], list[int] | None]:
        train, sample = self.train, self.sample
        for extra in extras:
            train = extra.get("seeds", {}).get("seeds", train)
            sample = extra.get("seeds", {}).get("sample_seeds", sample)
        return train, sample


def _suite_seeds(model: SuiteModel, positions: Positions, errors: ErrorCollector) -> _SeedAxes:
    out: dict[str, list[int] | None] = {"seeds": None, "sample_seeds": None}
    for key in SEED_KEYS:
        value = getattr(model.defaults, key)
        if value is not None:
            try:
                out[key] = seed_list(value, key, locate(positions, ("defaults", key)))
            except UserError as exc:
                errors.add(exc)
    if model.matrix.seed is not None and model.defaults.seeds is not None:
        errors.add(SuiteError("matrix.seed and defaults.seeds both give the training seeds",
                              locate(positions, ("matrix", "seed")),
                              "keep defaults.seeds (matrix.seed: [..] is its older spelling)"))
    train = out["seeds"] or model.matrix.seed or [model.seed]
    return _SeedAxes(train, out["sample_seeds"])


def _entry_seeds(norm: dict, kind: str, p: tuple, positions: Positions) -> dict[str, list[int]]:
    """A matrix entry's own ``seeds``/``sample_seeds`` (dataset and family entries only)."""
    given = [k for k in SEED_KEYS if norm.get(k) is not None]  # null: not set, as in defaults
    if given and kind not in ("dataset", "family"):
        raise SuiteError(f"'{given[0]}' goes on a dataset or family entry or in defaults, not on a {kind}",
                         positions.get(p + (given[0], "__key__")) or locate(positions, p + (given[0],)))
    return {k: seed_list(norm[k], k, locate(positions, p + (k,))) for k in given}


def _axis(resolver: _Resolver, raw: list | None, kind: str, positions: Positions,
          errors: ErrorCollector) -> list[_AxisEntry]:
    """The resolved entries of one matrix axis, each with the ``train``/``eval``/``budget`` it overrides
    (an entry with errors is recorded and left out)."""
    if raw is None:
        return [(None, {})]
    out: list[_AxisEntry] = []
    for i, spec in enumerate(raw):
        p = ("matrix", kind, i)
        if spec is None:
            out.append((None, {}))
            continue
        try:
            norm = _normalize_spec(spec, kind, p, positions)
            sections = {s: norm[s] for s in CASE_SECTIONS + RUN_KEYS if s in norm}
            extra = {"sections": sections, "path": p, "seeds": _entry_seeds(norm, kind, p, positions)}
            if kind == "dataset" and METRIC_PARAMS in norm:
                extra[METRIC_PARAMS] = norm[METRIC_PARAMS]
            out.append((resolver.resolve(kind, norm, p), extra))
        except UserError as exc:
            errors.add(exc)
    return out


_CASE_AXES = ("dataset", "family", "sampler", "seed", "sample_seed")


def _check_exclude_rules(rules: list[dict[str, Any]], positions: Positions, errors: ErrorCollector) -> None:
    for i, rule in enumerate(rules):
        for key in rule:
            if key not in _CASE_AXES:
                close = did_you_mean(key, _CASE_AXES)
                errors.add(SuiteError(f"exclude rules match on dataset, family, sampler, seed or sample_seed, not '{key}'",
                                      positions.get(("exclude", i, key, "__key__"))
                                      or locate(positions, ("exclude", i)),
                                      f"did you mean '{close}'?" if close else None))


@dataclass
class _CaseBuilder:
    """Makes a :class:`Case` from resolved specs: case sections (suite defaults, then each matrix
    entry's overrides), component versions and the metrics that do not apply."""

    model: SuiteModel
    metrics: list[dict[str, Any]]
    regs: Registries
    versions: dict[str, str]
    positions: Positions
    resolver: Any = None

    def __call__(self, d: dict, f: dict, s: dict | None, seed: int, extras: list[dict],
                 sample_seed: int | None = None) -> Case:
        sections = {"train": (TrainConfig, self.model.defaults.train.model_dump()),
                    "eval": (EvalConfig, self.model.defaults.eval.model_dump()),
                    "budget": (BudgetConfig, self.model.defaults.budget.model_dump()),
                    "resources": (ResourcesConfig, self.model.defaults.resources.model_dump())}
        values = {key: base for key, (_, base) in sections.items()}
        for extra in extras:
            secs, p = extra.get("sections", {}), extra.get("path", ())
            for key, (schema, _) in sections.items():
                values[key] = _section(secs, key, schema, values[key], p, self.positions)
        values["train"] = {k: v for k, v in values["train"].items()
                           if k not in UNHASHED_TRAIN_KEYS or v != UNHASHED_TRAIN_KEYS[k]}
        metrics = self.metrics
        for extra in extras:
            if METRIC_PARAMS in extra:
                metrics = self._metric_overrides(metrics, extra[METRIC_PARAMS], extra["path"] + (METRIC_PARAMS,))
        run = _run_keys(self.model.defaults, extras, self.positions)
        resources = {k: v for k, v in values["resources"].items() if v is not None}
        if run["threads"] is None:  # the default depends on the suite only, never on the executor or machine
            run["threads"] = resources.get("cpus", 1)
        case = Case(self.model.name, d, f, s, metrics, values["train"], values["eval"], values["budget"], seed,
                    **run, resources=resources, sample_seed=sample_seed)
        case.versions = _versions_for(case, self.regs, self.versions)
        case.skipped_metrics = _metric_skips(self.regs, d, f, metrics)
        return case

    def _metric_overrides(self, metrics: list[dict], overrides: Any, path: tuple) -> list[dict]:
        """The suite's metrics with a dataset entry's ``metric_params`` applied: each key names a metric
        of the suite (its name or id); its parameters are merged over the metric's and re-resolved,
        keeping the metric's id (so its column in ``bench compare`` stays the same)."""
        if not isinstance(overrides, dict):
            raise SuiteError(f"'{METRIC_PARAMS}' must map metric names to parameters", locate(self.positions, path))
        known = {m["name"]: m for m in metrics} | {str(m.get("id")): m for m in metrics}
        chosen: dict[int, dict] = {}
        for key, params in overrides.items():
            if key not in known:
                close = did_you_mean(str(key), sorted(known))
                raise SuiteError(f"{METRIC_PARAMS}: '{key}' is not a metric of this suite",
                                 self.positions.get(path + (key, "__key__")) or locate(self.positions, path),
                                 f"did you mean '{close}'?" if close else f"metrics: {', '.join(sorted(known))}")
            if not isinstance(params, dict) or "name" in params or "id" in params:
                raise SuiteError(f"{METRIC_PARAMS}.{key} must be a mapping of parameters (no name or id)",
                                 locate(self.positions, path + (key,)))
            base = known[key]
            chosen[id(base)] = {**chosen.get(id(base), base), **params}
        out = []
        for m in metrics:
            if id(m) not in chosen:
                out.append(m)
                continue
            merged = chosen[id(m)]
            spec = {k: v for k, v in merged.items() if k != "id"}
            out.append(self.resolver.resolve("metric", spec | {"id": m["id"]}, path + (m["name"],)))
        return out


def _run_keys(defaults: Defaults, extras: list[dict], positions: Positions) -> dict[str, Any]:
    """``device``, ``precision``, ``tf32`` and ``threads`` of a case: the suite defaults, then each matrix entry's;
    the device resolved now (``auto``), so that one the machine lacks is an error before any case runs."""
    from .device import resolve_device

    values = {key: getattr(defaults, key) for key in RUN_KEYS}
    where = {key: locate(positions, ("defaults", key)) for key in RUN_KEYS}
    for extra in extras:
        secs, p = extra.get("sections", {}), extra.get("path", ())
        for key in RUN_KEYS:
            if key in secs:
                try:
                    values[key] = getattr(Defaults.model_validate({key: secs[key]}), key)
                except pydantic.ValidationError as exc:
                    raise _validation_error(exc, positions, p, Defaults) from None
                where[key] = locate(positions, p + (key,))
    try:
        values["device"] = resolve_device(values["device"])
    except UserError as exc:
        raise SuiteError(exc.message, where["device"], exc.hint) from None
    return values


def _product_cases(model: SuiteModel, axes: dict[str, list[_AxisEntry]], build: _CaseBuilder,
                   pruned: list[Pruned], errors: ErrorCollector, seeds: _SeedAxes) -> list[Case]:
    """The matrix: every (dataset, family, sampler, seed, sample seed) not excluded; incompatible
    ones go to ``pruned`` (once per training seed)."""
    out = []
    for (d, dx), (f, fx), (s, sx) in itertools.product(axes["dataset"], axes["family"], axes["sampler"]):
        train_seeds, sample_seeds = seeds.for_entries([dx, fx])
        for seed in train_seeds:
            reported = False
            for sample_seed in sample_seeds or [seed]:
                if any(_matches(rule, {"dataset": d, "family": f, "sampler": s},
                                {"seed": seed, "sample_seed": sample_seed}) for rule in model.exclude):
                    continue
                reason = _compatibility(build.regs, d, f, s)
                if reason:
                    if not reported:
                        pruned.append(Pruned(label(d), label(f), label(s), seed, reason))
                        reported = True
                    continue
                try:
                    out.append(build(d, f, s, seed, [dx, fx, sx], sample_seed))
                except UserError as exc:  # a bad train/eval/budget override: met once per case, reported once
                    errors.add(exc)
    return out


#: the keys of an ``include_cases`` entry: the case's axes and the case sections it overrides
INCLUDE_CASE_KEYS = (*_CASE_AXES, *CASE_SECTIONS)


def _include_cases(model: SuiteModel, resolver: _Resolver, build: _CaseBuilder, positions: Positions,
                   errors: ErrorCollector) -> list[Case]:
    """The explicit ``include_cases`` entries (an incompatible one is an error, not pruned). An entry
    takes ``train``/``eval``/``budget`` overrides, on itself or on its specs, as a matrix entry does;
    any other key (``metrics`` among them: a case runs the suite's metrics) is an error, never ignored."""
    out = []
    for i, extra in enumerate(model.include_cases):
        try:
            out.append(_include_case(model, resolver, build, positions, extra, ("include_cases", i)))
        except UserError as exc:
            errors.add(exc)
    return out


def _include_case(model: SuiteModel, resolver: _Resolver, build: _CaseBuilder, positions: Positions,
                  extra: dict, p: tuple) -> Case:
    problems = ErrorCollector()
    for key in extra:
        if key in INCLUDE_CASE_KEYS:
            continue
        where = positions.get(p + (key, "__key__")) or locate(positions, p + (key,))
        if key == "metrics":
            problems.add(SuiteError("include_cases entries cannot set 'metrics': every case runs the "
                                    "suite's top-level metrics", where,
                                    "move these cases to a suite of their own with its own 'metrics'"))
            continue
        close = did_you_mean(str(key), INCLUDE_CASE_KEYS)
        problems.add(SuiteError(f"unknown key '{key}' in {p[0]}.{p[1]}", where,
                                f"did you mean '{close}'?" if close else f"allowed: {', '.join(INCLUDE_CASE_KEYS)}"))
    specs: dict[str, dict | None] = {}
    extras = [{"sections": {s: extra[s] for s in CASE_SECTIONS if s in extra}, "path": p}]
    for kind in ("dataset", "family", "sampler"):
        if extra.get(kind) is None:
            if kind != "sampler":
                problems.add(SuiteError(f"include_cases entry needs a '{kind}'", locate(positions, p)))
            specs[kind] = None
            continue
        try:
            norm = _normalize_spec(extra[kind], kind, p + (kind,), positions)
            if any(k in norm for k in SEED_KEYS):
                raise SuiteError("an include_cases entry is one case: give it 'seed' and 'sample_seed', "
                                 "not 'seeds'/'sample_seeds'", locate(positions, p + (kind,)))
            specs[kind] = resolver.resolve(kind, norm, p + (kind,))
            extras.insert(-1, {"sections": {s: norm[s] for s in CASE_SECTIONS if s in norm}, "path": p + (kind,)})
        except UserError as exc:
            problems.add(exc)
    seed = extra.get("seed", model.seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.add(SuiteError("seed must be an integer", locate(positions, p + ("seed",))))
    sample_seed = extra.get("sample_seed", seed)
    if not isinstance(sample_seed, int) or isinstance(sample_seed, bool) or sample_seed < 0:
        problems.add(SuiteError("sample_seed must be a non-negative integer", locate(positions, p + ("sample_seed",))))
    problems.raise_if_any()
    reason = _compatibility(build.regs, specs["dataset"], specs["family"], specs["sampler"])
    if reason:
        raise SuiteError(f"include_cases entry is incompatible: {reason}", locate(positions, p))
    return build(specs["dataset"], specs["family"], specs["sampler"], seed, extras, sample_seed)


def _versions_for(case: Case, regs: Registries, versions: dict[str, str]) -> dict[str, str]:
    """``kind:name`` -> version of the plugin that registered it, for every component of the case;
    a nested component is keyed under its parent's kind (``family:noise:gff``, ``metric:extractor:auto``)."""
    out = {}

    def add(kind: str, spec: dict | None) -> None:
        if not spec:
            return
        entry = regs[kind].entry(spec["name"])
        out[f"{kind}:{spec['name']}"] = versions.get(entry.plugin, "?")
        for key, sub_kind in entry.nested().items():
            if isinstance(spec.get(key), dict):
                sub = regs[sub_kind].entry(spec[key]["name"])
                out[f"{kind}:{key}:{spec[key]['name']}"] = versions.get(sub.plugin, "?")

    add("dataset", case.dataset)
    add("family", case.family)
    add("sampler", case.sampler)
    for m in case.metrics:
        add("metric", m)
    return out


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
