"""The analysis commands against the team tracking server (PostgreSQL, basic auth, proxied
artifacts), reached only through MLFLOW_TRACKING_URI and the credentials in the environment.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from analysis import figures, report, table1
from cifar_mlflow import schema
from tests import fake_runs

pytestmark = pytest.mark.e2e


def invoke(command, *args: str) -> str:
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_table1_figures_and_report_from_a_tracking_server(server_env, tmp_path: Path):
    client = MlflowClient()
    experiment = server_env["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = fake_runs.create_experiment(client, experiment)
    sweeps = fake_runs.log_all_studies(client, experiment_id, fake_runs.Clock(), seeds=2)
    # The server is shared by the session: --experiment keeps other tests' sweeps out.
    scope = ("--experiment", experiment)

    csv = pd.read_csv(io.StringIO(invoke(table1.main, "--format", "csv", *scope)))
    logged = [client.get_run(run_id).data for run_id in sweeps["patch"].trials.values()]
    assert sorted(csv["patch_size"]) == sorted({int(run.params["patch_size"]) for run in logged})
    assert set(csv[schema.METRIC_NUM_PARAMS]) == {
        run.metrics[schema.METRIC_NUM_PARAMS] for run in logged
    }
    assert (csv["seeds"] == 2).all() and csv["test_acc_std"].notna().all()

    invoke(figures.main, "--study", "lr", "--output-dir", str(tmp_path / "out"), *scope)
    parent = sweeps["lr"].parent_run_id
    served = client.download_artifacts(parent, "figures/lr_curves.png", str(tmp_path))
    assert Path(served).read_bytes() == (tmp_path / "out" / "lr_curves.png").read_bytes()

    invoke(report.main, "--output", str(tmp_path / "report.html"), *scope)
    html = (tmp_path / "report.html").read_text()
    assert server_env["MLFLOW_TRACKING_PASSWORD"] not in html
    links = re.findall(r"""(?:src|href)\s*=\s*["']?(https?:[^"'\s>]*)""", html)
    run_page = (
        f"{server_env['MLFLOW_TRACKING_URI'].rstrip('/')}/#/experiments/{experiment_id}/runs/"
    )
    assert links and all(link.startswith(run_page) for link in links)
    assert run_page + parent in links
    # Five curve panels, two weight images, five accuracy-against-compute figures.
    assert html.count('<img src="data:image/png;base64,') == 7 + 5
