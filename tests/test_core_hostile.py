"""Hostile input: arbitrary YAML and arbitrary bytes never produce a traceback or an exit code
other than 0 or 2; corrupt store entries are detected and rebuilt, never used."""
import copy
import json
import random
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import UserError
from bench.store import Store

KEYS = ["name", "matrix", "dataset", "family", "sampler", "metrics", "defaults", "train", "eval", "steps",
        "include", "exclude", "seed", "tracking", "budget", "id", "noise", "include_cases", "lr", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12), st.sampled_from(["toy2d/moons", "fitgauss", "gauss",
                                                                             "digits8", "mean_err"]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=20)


def _check(result):
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    assert "internal error" not in result.output


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_arbitrary_yaml_documents(tmp_path, doc):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    _check(CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "s.yaml"
    path.write_bytes(data)
    _check(CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_around_a_valid_suite(tmp_path, text):
    valid = "name: ok\nmatrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n"
    path = tmp_path / "s.yaml"
    path.write_text(valid + text)
    _check(CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"]))


def test_store_detects_and_removes_corrupt_entries(tmp_path):
    store = Store(tmp_path / "store")
    store.put("checkpoints", "abc123", lambda d: (d / "w.bin").write_bytes(b"0123456789"), meta={"x": 1})
    entry = store.get("checkpoints", "abc123")
    assert entry is not None and store.meta("checkpoints", "abc123") == {"x": 1}
    (entry / "w.bin").write_bytes(b"01234")  # truncated
    assert store.get("checkpoints", "abc123") is None
    assert not store.entry_dir("checkpoints", "abc123").exists()
    store.put("checkpoints", "abc123", lambda d: (d / "w.bin").write_bytes(b"x"))
    (store.entry_dir("checkpoints", "abc123") / "entry.json").write_text("{not json")
    assert store.get("checkpoints", "abc123") is None


def test_failed_writer_leaves_no_entry(tmp_path):
    store = Store(tmp_path / "store")

    def writer(d):
        (d / "half").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.put("checkpoints", "k", writer)
    assert store.get("checkpoints", "k") is None
    assert not any(p.name.startswith(".k") for p in (tmp_path / "store" / "checkpoints" / "k").parent.glob(".*"))


def test_corrupt_checkpoint_is_retrained_not_used(workdir):
    suite = ("name: c\ndefaults: {train: {steps: 20, lr: 0.05}, eval: {num_samples: 20}}\n"
             "matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n")
    (workdir / "s.yaml").write_text(suite)
    runner = CliRunner()
    assert runner.invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug"]).exit_code == 0
    ckpt = next(workdir.glob(".bench-store/checkpoints/*/*/checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    result = runner.invoke(app, ["run", "s.yaml", "-q", "--no-resume", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    records = sorted(workdir.glob("results/c/*/cases/*/record.json"))
    assert json.loads(records[-1].read_text())["trained"] is True


def test_a_checkpoint_carrying_code_is_never_executed(workdir):
    """A store entry with a valid checksum whose pickle would run code: weights_only refuses it and
    the model is retrained."""
    import hashlib
    import os
    import pickle

    suite = ("name: p\ndefaults: {train: {steps: 10, lr: 0.05}, eval: {num_samples: 10}}\n"
             "matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n")
    (workdir / "s.yaml").write_text(suite)
    runner = CliRunner()
    assert runner.invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug"]).exit_code == 0
    ckpt = next(workdir.glob(".bench-store/checkpoints/*/*/checkpoint.pt"))
    marker = workdir / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt.write_bytes(pickle.dumps(Evil()))
    manifest = ckpt.parent / "entry.json"
    info = json.loads(manifest.read_text())
    info["files"]["checkpoint.pt"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(info))
    result = runner.invoke(app, ["run", "s.yaml", "-q", "--no-resume", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    record = json.loads(sorted(workdir.glob("results/p/*/cases/*/record.json"))[-1].read_text())
    assert record["trained"] is True
    assert any("could not be loaded" in n and "retrain" in n for n in record["notes"])


def test_user_error_formats_location():
    from bench.errors import Location

    err = UserError("bad", Location("s.yaml", 3, 4), hint="did you mean 'x'?")
    assert str(err) == "s.yaml:3:4: error: bad (did you mean 'x'?)"


# ----------------------------------------------------------------------------- mutated real suites

SUITES_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "suites"
ODD_VALUES = [None, True, 0, -1, 2**64, 1e309, float("nan"), "", "x" * 300, "..", "a/b", "toy2d/moons", "ddpm",
              [], {}, [1, "a", None], {"name": 3}, {"name": "ddpm", "steps": "many"}, {"1": {"2": [3]}}]
ODD_KEYS = ["name", "id", "matrix", "family", "sampler", "steps", "include", "seed", "x", "api_key", "..", ""]


def _nodes(obj, out, above=()):
    """Every (container, key) pair under ``obj`` (an alias mutation may have made it cyclic)."""
    if id(obj) in above:
        return out
    above = (*above, id(obj))
    if isinstance(obj, dict):
        for k in list(obj):
            out.append((obj, k))
            _nodes(obj[k], out, above)
    elif isinstance(obj, list):
        for i in range(len(obj)):
            out.append((obj, i))
            _nodes(obj[i], out, above)
    return out


def _trim(obj, rng, keep=1):
    """Keep at most ``keep`` random items of every list (the expansion stays small and fast)."""
    if isinstance(obj, dict):
        return {k: _trim(v, rng, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        items = obj if len(obj) <= keep else rng.sample(obj, keep)
        return [_trim(v, rng, keep) for v in items]
    return obj


def _mutate_data(doc, rng):
    nodes = _nodes(doc, [])
    if not nodes:
        return doc
    op = rng.choice(["delete", "retype", "swap", "alias", "rekey", "duplicate"])
    parent, key = rng.choice(nodes)
    if op == "delete":
        del parent[key]
    elif op == "retype":
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif op == "swap":
        other_parent, other_key = rng.choice(nodes)
        try:
            parent[key], other_parent[other_key] = other_parent[other_key], parent[key]
        except (KeyError, IndexError):  # the second node lived under the first
            pass
    elif op == "alias":  # the same object in two places: safe_dump writes an anchor and an alias
        other_parent, other_key = rng.choice(nodes)
        try:
            parent[key] = other_parent[other_key]
        except (KeyError, IndexError):
            pass
    elif op == "rekey" and isinstance(parent, dict):
        new = rng.choice(ODD_KEYS + [rng.randint(0, 3), None, True])
        parent[new] = parent.pop(key)
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return doc


def _mutate_text(text, rng):
    lines = text.splitlines(keepends=True)
    op = rng.choice(["truncate", "dupline", "anchor", "dropline", "indent"])
    i = rng.randrange(len(lines)) if lines else 0
    if op == "truncate":
        return text[:rng.randrange(len(text) + 1)]
    if not lines:
        return text
    if op == "dupline":  # duplicate keys, mostly
        lines.insert(i, lines[i])
    elif op == "anchor":  # an alias to a new anchor on another line, or to an unknown one
        j = rng.randrange(len(lines))
        if ": " in lines[i] and ": " in lines[j]:
            head, _, value = lines[i].partition(": ")
            lines[i] = f"{head}: &fz {value}"
            head, _, _ = lines[j].partition(": ")
            lines[j] = f"{head}: *fz\n"
    elif op == "dropline":
        del lines[i]
    else:
        lines[i] = " " + lines[i]
    return "".join(lines)


def mutated_real_suites(n, seed=11):
    """``n`` mutations of the shipped suites: lists trimmed to one random item, then one to three
    data mutations (delete, retype, swap, alias, rekey, duplicate) and, one time in two, a text
    mutation (truncate, duplicate or drop a line, add an anchor and alias, break the indentation)."""
    rng = random.Random(seed)
    sources = {p.name: yaml.safe_load(p.read_text()) for p in sorted(SUITES_DIR.glob("*.yaml"))}
    names = sorted(sources)
    for _ in range(n):
        name = rng.choice(names)
        doc = _trim(sources[name], rng)  # a fresh copy of the containers
        for _ in range(rng.randint(1, 3)):
            doc = _mutate_data(doc, rng)
        try:
            text = yaml.safe_dump(doc, sort_keys=False)
        except yaml.YAMLError:
            continue
        if rng.random() < 0.5:
            text = _mutate_text(text, rng)
        yield name, text


@pytest.mark.parametrize("count", [2000, pytest.param(20000, marks=pytest.mark.acceptance)])
def test_mutated_real_suites_never_crash_validation(tmp_path, count):
    """The `bench validate` code path, in-process, over mutated shipped suites: each one is valid
    or a UserError (exit 2); anything else would be exit 3 with a traceback."""
    from bench.plugins import get_manager
    from bench.suite import load_suite

    trim_rng = random.Random(0)
    for p in SUITES_DIR.glob("*.yaml"):  # includes resolve next to the mutated file, trimmed as well
        (tmp_path / p.name).write_text(yaml.safe_dump(_trim(yaml.safe_load(p.read_text()), trim_rng), sort_keys=False))
    manager = get_manager(())
    regs, versions = manager.registries, manager.versions()
    crashes, outcomes = [], {"ok": 0, "user error": 0}
    path = tmp_path / "mutated.yaml"
    seen = 0
    for name, text in mutated_real_suites(count):
        seen += 1
        path.write_text(text)
        try:
            load_suite(path, regs, versions, [])  # what `bench validate` runs, after the same YAML load
            outcomes["ok"] += 1
        except UserError as exc:
            for err in getattr(exc, "errors", None) or [exc]:  # several problems: one line each
                assert "\n" not in str(err), str(exc)
            outcomes["user error"] += 1
        except Exception as exc:  # noqa: BLE001
            crashes.append(f"{name}: {type(exc).__name__}: {exc}\n---\n{text[:2000]}")
    assert not crashes, f"{len(crashes)} crash(es); first:\n{crashes[0]}"
    assert seen >= count * 0.99 and outcomes["ok"] > count // 20, outcomes
