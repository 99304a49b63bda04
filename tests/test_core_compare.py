"""``bench compare`` / ``bench power`` on a store written directly with MLflow: two datasets, two
families on three seeds, a third family on two other seeds, every case run first under plugin
version 0.1 and again under 0.2 (one case only under 0.1)."""
import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from bench.cli import app
from bench.stats import benjamini_hochberg, seeds_for_power, t_interval

DATASETS = {"d1": 10.0, "d2": 20.0}
FAMILIES = {"ddpm": 0.0, "fm": -1.0}
SEED_EFFECT = {0: 0.3, 1: -0.2, 2: 0.5, 3: -0.4, 4: 0.1}
NOISE = np.random.default_rng(0).normal(0, 0.1, size=64)


def value(dataset, family, seed, i):
    return DATASETS[dataset] + FAMILIES.get(family, 0.5) + SEED_EFFECT[seed] + float(NOISE[i])


def cases():
    out = [(d, f, s) for d in DATASETS for f in FAMILIES for s in (0, 1, 2)]
    return out + [("d1", "flow", 3), ("d1", "flow", 4)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("exp")
    t0 = 1_700_000_000_000
    latest = {}
    for version, offset in (("0.1", 0), ("0.2", 10_000_000)):
        for i, (d, f, s) in enumerate(cases()):
            if version == "0.2" and (d, f, s) == ("d2", "fm", 2):
                continue  # this case was not rerun: its latest run is the 0.1 one
            v = value(d, f, s, i) + (100.0 if version == "0.1" else 0.0)  # old version: far off
            case_id = f"exp/{d}/{f}/ddim/seed={s}"
            tags = {"bench.kind": "case", "bench.case_id": case_id, "bench.case_hash": f"{case_id}@{version}",
                    "bench.status": "ok", "bench.dataset": d, "bench.family": f, "bench.sampler": "ddim",
                    "bench.seed": str(s), "bench.version": "0.1.0", "bench.plugin.bench_x": version}
            run = client.create_run(exp, run_name=case_id, tags=tags, start_time=t0 + offset + i * 1000)
            metrics = {"fid": v, "nfe": 10.0}
            if f != "flow":
                metrics.update(fid_ci_lo=v - 0.25, fid_ci_hi=v + 0.15)
            client.log_batch(run.info.run_id, metrics=[Metric(k, x, t0, 0) for k, x in metrics.items()],
                             params=[Param("eval.num_samples", "1000"), Param("sampler.name", "ddim")])
            client.set_terminated(run.info.run_id)
            latest[(d, f, s)] = v
    return uri, latest


def cli(store, *args):
    return CliRunner().invoke(app, [*args, "-e", "exp", "--tracking-uri", store[0]])


def read_csv(text):
    return pd.read_csv(io.StringIO(text), comment="#")


def test_refuses_to_average_over_an_axis_not_named(store):
    result = cli(store, "compare", "--metric", "fid", "--rows", "family")  # datasets would be mixed
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "would average over dataset (2 values: d1, d2)" in lines[0]
    assert "--average dataset" in lines[0] and "Traceback" not in result.output


def test_default_rows_are_every_varying_axis_but_seeds(store):
    result = cli(store, "compare", "--metric", "fid", "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = read_csv(result.output)
    assert frame.columns[0] == "dataset+family" and set(frame["n"]) == {2, 3}
    assert "averaged over: seed" in result.output


def test_latest_run_per_case_id_mean_interval_and_n(store):
    _, latest = store
    result = cli(store, "compare", "--metric", "fid", "--rows", "dataset+family", "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = read_csv(result.output).set_index("dataset+family")
    assert list(frame.columns[:8]) == ["sampler", "metric", "mean", "lo", "hi", "n", "interval", "mixed_versions"]
    seeds = [latest[("d1", "ddpm", s)] for s in (0, 1, 2)]
    row = frame.loc["d1 / ddpm"]
    iv = t_interval(seeds)
    assert row["n"] == 3 and row["interval"] == "t"
    assert row["mean"] == pytest.approx(np.mean(seeds))  # the 0.1 runs (+100) are ignored
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(seeds), scale=st.sem(seeds))
    assert (row["lo"], row["hi"]) == (pytest.approx(lo), pytest.approx(hi)) == (pytest.approx(iv.lo), pytest.approx(iv.hi))
    notes = [line for line in result.output.splitlines() if line.startswith("# ")]
    assert any("averaged over: seed" in n for n in notes)
    assert any("13 older run(s) of the same cases ignored" in n for n in notes)


def test_cells_mixing_plugin_versions_are_flagged(store):
    result = cli(store, "compare", "--metric", "fid", "--rows", "dataset+family")
    assert result.exit_code == 0, result.output
    mixed = [line for line in result.output.splitlines() if "†" in line]
    assert any(line.startswith("d2 / fm") for line in mixed)
    assert not any(line.startswith("d1 / ddpm") for line in mixed)
    assert "† the cell mixes versions: bench.plugin.bench_x (0.1, 0.2)" in result.output
    assert "mean ± 95% half-width (n=seeds): Student-t interval over seeds" in result.output


def test_explicit_average_over_datasets_is_per_seed_first(store):
    _, latest = store
    result = cli(store, "compare", "--metric", "fid", "--average", "dataset", "--format", "csv",
                 "--where", "family=ddpm")
    assert result.exit_code == 0, result.output
    row = read_csv(result.output).iloc[0]
    per_seed = [(latest[("d1", "ddpm", s)] + latest[("d2", "ddpm", s)]) / 2 for s in (0, 1, 2)]
    assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean(per_seed))
    assert row["hi"] == pytest.approx(t_interval(per_seed).hi)
    assert "dataset (--average; per seed first)" in result.output
    bad = cli(store, "compare", "--metric", "fid", "--average", "datset")
    assert bad.exit_code == 2 and "did you mean 'dataset'" in bad.output


def test_one_seed_shows_the_bootstrap_interval_and_says_so(store):
    _, latest = store
    result = cli(store, "compare", "--metric", "fid", "--rows", "dataset+family", "--where", "seed=0",
                 "--format", "markdown")
    assert result.exit_code == 0, result.output
    v = latest[("d1", "ddpm", 0)]
    assert f"| d1 / ddpm | {v:.4g} [{v - 0.25:.4g}, {v + 0.15:.4g}] (n=1, bootstrap) |" in result.output
    assert "the run's own 95% bootstrap interval (fid_ci_lo, fid_ci_hi)" in result.output
    one = cli(store, "compare", "--metric", "fid", "--rows", "dataset+family", "--where", "seed=3")
    assert f"{latest[('d1', 'flow', 3)]:.4g} (n=1)" in one.output and "no per-case interval" in one.output


def test_baseline_paired_welch_and_benjamini_hochberg(store):
    _, latest = store
    result = cli(store, "compare", "--metric", "fid", "--rows", "family", "--cols", "dataset",
                 "--baseline", "family=ddpm", "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = read_csv(result.output).set_index(["family", "dataset"])
    p = {}
    for d in DATASETS:
        fm = [latest[(d, "fm", s)] for s in (0, 1, 2)]
        base = [latest[(d, "ddpm", s)] for s in (0, 1, 2)]
        ref = st.ttest_rel(fm, base)
        row = frame.loc[("fm", d)]
        assert row["test"] == "paired" and row["p"] == pytest.approx(ref.pvalue)
        assert row["diff_lo"] == pytest.approx(ref.confidence_interval().low)
        assert row["diff"] == pytest.approx(np.mean(np.subtract(fm, base)))
        p[("fm", d)] = ref.pvalue
    flow = [latest[("d1", "flow", s)] for s in (3, 4)]
    base = [latest[("d1", "ddpm", s)] for s in (0, 1, 2)]
    ref = st.ttest_ind(flow, base, equal_var=False)
    row = frame.loc[("flow", "d1")]
    assert row["test"] == "welch" and row["p"] == pytest.approx(ref.pvalue)
    p[("flow", "d1")] = ref.pvalue
    keys = sorted(p)
    q = dict(zip(keys, benjamini_hochberg([p[k] for k in keys])))
    for k in keys:
        assert frame.loc[k, "q"] == pytest.approx(q[k])
        assert bool(frame.loc[k, "significant"]) == (q[k] <= 0.05)
    assert frame.loc[("fm", "d1"), "significant"]  # a shift of -1 with seed noise removed by pairing
    assert frame.loc[("ddpm", "d1"), "test"] == "baseline"
    text = cli(store, "compare", "--metric", "fid", "--rows", "family", "--cols", "dataset", "--baseline",
               "family=ddpm").output
    assert "difference vs family=ddpm:" in text and "Benjamini-Hochberg adjusted p over 3 comparison(s)" in text
    bad = cli(store, "compare", "--metric", "fid", "--rows", "family", "--cols", "dataset", "--baseline", "sampler=x")
    assert bad.exit_code == 2 and "must be the --rows key 'family'" in bad.output
    bad = cli(store, "compare", "--metric", "fid", "--rows", "family", "--cols", "dataset", "--baseline", "family=ddpn")
    assert bad.exit_code == 2 and "did you mean 'ddpm'" in bad.output


def test_power_from_the_pilot_spread_and_sample_tradeoff(store):
    _, latest = store
    result = cli(store, "power", "--metric", "fid", "--delta", "0.5", "--rows", "dataset+family")
    assert result.exit_code == 0, result.output
    ss, dof = 0.0, 0
    for d in DATASETS:
        for f in FAMILIES:
            v = np.array([latest[(d, f, s)] for s in (0, 1, 2)])
            ss, dof = ss + ((v - v.mean()) ** 2).sum(), dof + 2
    v = np.array([latest[("d1", "flow", s)] for s in (3, 4)])
    ss, dof = ss + ((v - v.mean()) ** 2).sum(), dof + 1
    sd = math.sqrt(2) * math.sqrt(ss / dof)
    assert f"seeds needed: {seeds_for_power(sd, 0.5)} " in result.output
    assert f"per-seed sd of a difference {sd:.4g}" in result.output
    # per-case bootstrap sd (0.4 / (2 * 1.96)) at 1000 samples; 4x the samples halves it
    assert "at 1000 samples" in result.output
    s_case = 0.4 / (2 * 1.959964)
    row4000 = next(line for line in result.output.splitlines() if line.strip().startswith("4000 "))
    sd4000 = math.sqrt(max(sd ** 2 - 2 * s_case ** 2, 0) + 2 * s_case ** 2 / 4)
    assert float(row4000.split()[1]) == pytest.approx(sd4000, rel=1e-3)
    assert int(row4000.split()[2]) == seeds_for_power(sd4000, 0.5)
    paired = cli(store, "power", "--metric", "fid", "--delta", "0.5", "--rows", "family", "--cols", "dataset",
                 "--baseline", "family=ddpm")
    assert paired.exit_code == 0 and "against family=ddpm" in paired.output
    bad = cli(store, "power", "--metric", "fid", "--delta", "0", "--rows", "dataset+family")
    assert bad.exit_code == 2 and "--delta" in bad.output
    one = cli(store, "power", "--metric", "fid", "--delta", "1", "--rows", "dataset+family+seed")
    assert one.exit_code == 2 and "at least 2 seeds" in one.output


def test_plot_with_error_bars_follows_the_rules(store, tmp_path):
    out = tmp_path / "p.png"
    refused = cli(store, "compare", "--metric", "fid", "--plot", str(out), "--group", "family")
    assert refused.exit_code == 2 and "average over dataset" in refused.output
    result = cli(store, "compare", "--metric", "fid", "--plot", str(out), "--group", "family",
                 "--average", "dataset")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000


SUITE = """\
name: cmp
defaults:
  train: {steps: 20, batch_size: 64, lr: 0.05}
  eval: {num_samples: 100, batch_size: 64}
matrix:
  dataset: [toy2d/moons]
  family: [fitgauss]
  sampler: [gauss]
  seed: [0, 1]
metrics: [mean_err]
"""


def test_bench_run_logs_the_comparison_table_with_the_parent_run(workdir):
    from bench.tracking import search_runs_frame
    from mlflow import MlflowClient

    (workdir / "suite.yaml").write_text(SUITE)
    result = CliRunner().invoke(app, ["run", "suite.yaml", "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = search_runs_frame(uri, ["cmp"], filter_string="tags.`bench.kind` = 'suite'")
    client = MlflowClient(tracking_uri=uri)
    arts = {a.path for a in client.list_artifacts(runs["run_id"].iloc[0])}
    assert {"comparison.md", "comparison.csv"} <= arts
    local = client.download_artifacts(runs["run_id"].iloc[0], "comparison.csv", str(workdir))
    frame = read_csv(open(local).read())
    assert list(frame["metric"].unique()) == ["mean_err", "sample_time_s", "train_time_s"]
    frame = frame[frame["metric"] == "mean_err"]
    assert list(frame["sampler"]) == ["gauss"] and list(frame["n"]) == [2]
    cases = search_runs_frame(uri, ["cmp"], filter_string="tags.`bench.kind` = 'case'")
    gauss = cases["metrics.mean_err"]
    assert frame["mean"].iloc[0] == pytest.approx(gauss.mean())
    assert frame["hi"].iloc[0] == pytest.approx(t_interval(list(gauss)).hi)


def test_line_plot_draws_the_intervals_as_error_bars(tmp_path, monkeypatch):
    import matplotlib.axes

    from bench.plots import line_plot

    seen = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        seen.append(None if yerr is None else np.asarray(yerr).tolist())
        return real(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    frame = pd.DataFrame({"g": ["a", "a", "b"], "x": [1.0, 2.0, 1.0], "y": [3.0, 2.0, 5.0],
                          "lo": [2.5, 1.0, math.nan], "hi": [3.2, 2.5, math.nan]})
    line_plot(frame, "x", "y", "g", tmp_path / "p.png", lo="lo", hi="hi")
    assert np.allclose(seen[0], [[0.5, 1.0], [0.2, 0.5]])
    assert seen[1] is None  # no interval in group b: no bars


def test_sem_interval_at_one_seed_and_runs_without_a_value():
    from bench.compare import build_table
    from bench.compare_table import table_notes

    df = pd.DataFrame({"tags.bench.dataset": ["d", "d", "d"], "tags.bench.family": ["f", "f", "g"],
                       "tags.bench.sampler": ["none"] * 3, "tags.bench.seed": ["0", "1", "0"],
                       "metrics.bpd": [2.0, math.nan, 3.0], "metrics.bpd_sem": [0.01, 0.02, math.nan]})
    table = build_table(df, "family", "sampler", "bpd")
    f = table.cells[("f", "none")].interval
    assert (f.kind, f.n) == ("sem", 1) and f.lo == pytest.approx(2.0 - 1.959964 * 0.01, abs=1e-6)
    assert table.cells[("g", "none")].interval.kind == "single"
    notes = table_notes(table, "e", 0)
    assert "1 run(s) without a value for bpd left out (failed or not measured)" in notes
    assert any("value ± 1.96 x bpd_sem" in n for n in notes)


# ----------------------------------------------------------------------------- seeds and sample seeds
# (issue 17: cells over training seeds and sample seeds, built from a frame as load_runs returns it)


def seed_frame(design, shift=None, drop=()):
    """Case runs of families a and b on sampler s (nfe 10) for every (seed, sample seed) of ``design``:
    value = seed effect + sampling noise + the family's shift."""
    shift = shift or {"a": 0.0, "b": -0.3}
    rng = np.random.default_rng(5)
    rows = []
    for seed, sample_seed in design:
        train_noise = rng.normal(0, 0.5)
        for fam, delta in shift.items():
            if (fam, seed, sample_seed) in drop:
                continue
            rows.append({"tags.bench.dataset": "d", "tags.bench.family": fam, "tags.bench.sampler": "s",
                         "tags.bench.seed": str(seed), "tags.bench.sample_seed": str(sample_seed),
                         "metrics.fid": 5.0 + train_noise + rng.normal(0, 0.1) + delta, "metrics.nfe": 10.0})
    return pd.DataFrame(rows)


def values_of(frame, fam):
    sub = frame[frame["tags.bench.family"] == fam]
    return {(int(s), int(t)): v for s, t, v in zip(sub["tags.bench.seed"], sub["tags.bench.sample_seed"], sub["metrics.fid"])}


def test_several_sample_seeds_per_training_seed_are_averaged_first_and_paired_by_both():
    from bench.compare import add_baseline, build_table
    from bench.compare_table import NESTED, csv_rows, render_markdown, render_text, table_notes

    design = [(s, t) for s in (0, 1, 2) for t in (10, 11)]
    frame = seed_frame(design, drop={("b", 2, 11)})  # b lacks one sample set: pairs must match both seeds
    table = build_table(frame, "family", "sampler", "fid")
    a, b = values_of(frame, "a"), values_of(frame, "b")
    per_seed = [np.mean([a[(s, t)] for t in (10, 11)]) for s in (0, 1, 2)]
    cell = table.cells[("a", "s")]
    assert cell.unit == NESTED and cell.interval.n == 3 and set(cell.units) == {("0",), ("1",), ("2",)}
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(per_seed), scale=st.sem(per_seed))
    assert (cell.interval.mean, cell.interval.lo, cell.interval.hi) == \
        (pytest.approx(np.mean(per_seed)), pytest.approx(lo), pytest.approx(hi))
    add_baseline(table, "family=a")
    d, _ = table.diffs[("b", "s")]
    common = [(s, t) for (s, t) in design if (s, t) in b]
    diff_b = [np.mean([b[k] for k in common if k[0] == s]) for s in (0, 1, 2)]
    diff_a = [np.mean([a[k] for k in common if k[0] == s]) for s in (0, 1, 2)]  # seed 2: sample seed 10 only
    ref = st.ttest_rel(diff_b, diff_a)
    assert (d.kind, d.n) == ("paired", 3) and d.p == pytest.approx(ref.pvalue)
    assert d.lo == pytest.approx(ref.confidence_interval().low)
    notes = table_notes(table, "e", 0)
    assert "averaged over: seed, sample_seed" in notes
    assert any(n.startswith("n counts training seeds: each is first the mean over its sample seeds") for n in notes)
    assert any("paired by seed and sample seed" in n for n in notes)
    # every rendering shows mean ± half-width and n, and the difference's n
    iv = cell.interval
    shown = f"{iv.mean:.4g} ± {iv.half_width:.2g} (n=3)"
    assert shown in render_text(table, notes) and f"| a | {shown} |" in render_markdown(table, notes)
    assert "paired n=3" in render_text(table, notes) and "paired n=3" in render_markdown(table, notes)
    row = next(r for r in csv_rows(table) if r["row"] == "a")
    assert (row["n"], row["n_counts"]) == (3, NESTED) and row["half_width"] == pytest.approx(iv.half_width)
    assert next(r for r in csv_rows(table) if r["row"] == "b")["diff_n"] == 3


def test_seeds_that_vary_only_in_sampling_are_said_to():
    from bench.compare import add_baseline, build_table, filter_runs
    from bench.compare_table import SAMPLE_SEEDS, table_notes

    frame = seed_frame([(0, t) for t in (0, 1, 2, 3)])
    table = build_table(frame, "family", "sampler", "fid")
    cell = table.cells[("a", "s")]
    assert (cell.unit, cell.interval.n) == (SAMPLE_SEEDS, 4)
    assert cell.interval.hi == pytest.approx(t_interval(list(values_of(frame, "a").values())).hi)
    add_baseline(table, "family=a")
    ref = st.ttest_rel(list(values_of(frame, "b").values()), list(values_of(frame, "a").values()))
    assert table.diffs[("b", "s")][0].p == pytest.approx(ref.pvalue)
    notes = table_notes(table, "e", 0)
    assert "averaged over: sample_seed" in notes
    assert any("(n=sample seeds): Student-t interval over the sample seeds of one training seed: the seeds vary "
               "only in sampling, so the interval covers sampling noise only" in n for n in notes)
    assert not any("(n=seeds)" in n for n in notes)
    one = build_table(filter_runs(frame, ["sample_seed=2"]), "family", "sampler", "fid")  # --where sample_seed
    assert one.cells[("a", "s")].interval.n == 1


def test_a_sample_seed_equal_to_the_seed_is_not_a_second_replicate_axis():
    from bench.compare import build_table
    from bench.compare_table import SEEDS, table_notes

    frame = seed_frame([(0, 0), (1, 1), (2, 2)])
    table = build_table(frame, "family", "sampler", "fid")
    assert table.cells[("a", "s")].unit == SEEDS and table.cells[("a", "s")].interval.n == 3
    assert "averaged over: seed" in table_notes(table, "e", 0)


def test_the_plot_legend_gives_n_and_the_bars_are_the_intervals(tmp_path, monkeypatch):
    import matplotlib.axes

    from bench.compare import build_table, write_plot

    seen = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, label=None, **kw):
        seen.append((label, None if yerr is None else np.asarray(yerr)))
        return real(self, x, y, yerr=yerr, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    frame = seed_frame([(s, t) for s in (0, 1, 2) for t in (10, 11)])
    write_plot(frame, "e", "fid", "nfe", "family", tmp_path / "p.png", ())
    iv = build_table(frame, "family", "nfe", "fid").cells[("a", "10.0")].interval
    assert [label for label, _ in seen] == ["a (n=3)", "b (n=3)"]
    assert np.allclose(seen[0][1].ravel(), [iv.mean - iv.lo, iv.hi - iv.mean])


def test_runs_logged_before_sample_seeds_pair_with_new_ones_by_their_training_seed():
    from bench.compare import add_baseline, build_table, fill_sample_seed

    frame = seed_frame([(0, 0), (1, 1), (2, 2)])
    old = frame["tags.bench.family"] == "a"  # family a was logged before the sample_seed tag existed
    frame.loc[old, "tags.bench.sample_seed"] = None
    table = build_table(fill_sample_seed(frame), "family", "sampler", "fid")
    add_baseline(table, "family=a")
    assert table.diffs[("b", "s")][0].kind == "paired" and table.diffs[("b", "s")][0].n == 3


def test_power_with_sample_seeds_divides_the_sampling_part_by_their_number(monkeypatch):
    """Each training seed of a nested pilot is the mean of k sample seeds: its sampling variance is the
    per-case variance over k. With one training seed, the counts are sample seeds, and it says so."""
    import bench.power
    from bench.power import power_report

    frame = seed_frame([(s, t) for s in (0, 1, 2) for t in (10, 11)])
    frame["metrics.fid_ci_lo"], frame["metrics.fid_ci_hi"] = frame["metrics.fid"] - 0.2, frame["metrics.fid"] + 0.2
    frame["params.eval.num_samples"] = "1000"
    monkeypatch.setattr(bench.power, "load_runs", lambda e, u: (frame[frame["tags.bench.sample_seed"].notna()], e, 0))
    text = power_report("e", None, "fid", 0.5, [], "family", "sampler")
    s_case = 0.4 / (2 * 1.959964)
    assert f"{s_case:.4g} per run, {s_case / math.sqrt(2):.4g} per seed (the mean of 2 sample seeds)" in text
    assert f"{math.sqrt(2) * s_case / math.sqrt(2):.4g} for a difference" in text
    assert "sample seeds needed" not in text
    monkeypatch.setattr(bench.power, "load_runs", lambda e, u: (seed_frame([(0, t) for t in range(4)]), e, 0))
    assert "these are sample seeds needed, and training noise is not counted" in \
        power_report("e", None, "fid", 0.5, [], "family", "sampler")
