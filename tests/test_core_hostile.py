"""Hostile input: arbitrary YAML and arbitrary bytes never produce a traceback or an exit code
other than 0 or 2; corrupt store entries are detected and rebuilt, never used."""
import json
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
    assert any("could not be loaded safely" in n for n in record["notes"])


def test_user_error_formats_location():
    from bench.errors import Location

    err = UserError("bad", Location("s.yaml", 3, 4), hint="did you mean 'x'?")
    assert str(err) == "s.yaml:3:4: error: bad (did you mean 'x'?)"
