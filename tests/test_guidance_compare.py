"""``bench compare --plot`` on runs whose guidance scale varies: FID and precision against w."""
import pytest
from typer.testing import CliRunner

from bench.cli import app

FID = {0.0: 30.0, 1.0: 20.0, 3.0: 25.0}
PRECISION = {0.0: 0.5, 1.0: 0.7, 3.0: 0.9}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("g")
    for i, (w, seed) in enumerate((w, s) for w in FID for s in (0, 1)):
        sampler = "ddim" if w == 0 else f"ddim[guidance={w:g}]"
        case_id = f"g/digits8/ddpm/{sampler}/seed={seed}"
        tags = {"bench.kind": "case", "bench.case_id": case_id, "bench.status": "ok", "bench.dataset": "digits8",
                "bench.family": "ddpm", "bench.sampler": sampler, "bench.seed": str(seed)}
        run = client.create_run(exp, run_name=case_id, tags=tags, start_time=1_700_000_000_000 + i)
        shift = 1.0 if seed else -1.0  # seeds straddle the value: the mean is FID[w]
        metrics = {"fid": FID[w] + shift, "prc_precision": PRECISION[w] + shift / 100,
                   "prc_precision_real": 0.95, "nfe": 20.0 * (1 + (w != 0))}
        params = [Param("sampler.name", "ddim")] + ([Param("sampler.guidance", str(w))] if w else [])
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()], params=params)
        client.set_terminated(run.info.run_id)
    return uri


@pytest.mark.slow  # an MLflow SQLite store: its migrations take 10-25 s on a shared 2-core machine
def test_plot_draws_fid_and_precision_against_the_guidance_scale(store, tmp_path, monkeypatch):
    import bench.plots

    drawn = {}
    real = bench.plots.panels_plot

    def spy(panels, x, group, path, **kw):
        drawn.update(x=x, panels={y: frame for frame, y, _ in panels})
        return real(panels, x, group, path, **kw)

    monkeypatch.setattr(bench.plots, "panels_plot", spy)
    out = tmp_path / "frontier.png"
    result = CliRunner().invoke(app, ["compare", "--metric", "fid", "--plot", str(out), "--group", "family",
                                      "-e", "g", "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and drawn["x"] == "guidance"
    assert sorted(drawn["panels"]) == ["fid", "prc_precision"]
    for name, want in (("fid", FID), ("prc_precision", PRECISION)):
        frame = drawn["panels"][name].sort_values("guidance")
        assert frame["guidance"].tolist() == [0.0, 1.0, 3.0]
        assert frame[name].tolist() == pytest.approx([want[w] for w in (0.0, 1.0, 3.0)])
        assert (frame["lo"] < frame[name]).all() and (frame["hi"] > frame[name]).all()  # two seeds: t interval
