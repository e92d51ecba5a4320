"""The `torch_precision` and `unused_params` tags of real runs trained through the CLI."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from cifar_mlflow import cli, schema
from cifar_mlflow.environment import cpu_has_native_bf16

MIXER_ONLY = "mixer_activation,patch_size,embed_dim,num_blocks,drop_rate"


@pytest.mark.parametrize(
    ("options", "precision", "unused"),
    [
        (["--precision", "bf16", "--optimizer", "sgd"], "bf16", f"{MIXER_ONLY},momentum"),
        (["--precision", "fp32", "--optimizer", "adamw"], "fp32", MIXER_ONLY),
        (["--precision", "auto"], "bf16" if cpu_has_native_bf16() else "fp32", MIXER_ONLY),
    ],
    ids=["bf16-sgd", "fp32-adamw", "auto"],
)
def test_a_trained_run_says_its_precision_and_its_unused_options(
    tracking_store, small_synthetic_dir, tmp_path, capsys, options, precision, unused
) -> None:
    data = ["--dataset", "synthetic", "--data-dir", str(small_synthetic_dir)]
    small = ["--hidden-sizes", "32", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck")]
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", *data, *small, "--device", "cpu", *options])
    assert exited.value.code == 0, capsys.readouterr().err
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.TAG_TORCH_PRECISION] == precision
    assert run.data.tags[schema.TAG_UNUSED_PARAMS] == unused
    assert run.data.params["precision"] == options[1]  # the option as given, beside the tag
