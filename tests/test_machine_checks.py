"""What the machine cannot honour is bad input: refused in one line before any run exists.

The bad-input table (docs/bad-input.md) runs the rows a CPU-only machine can show
(`--device cuda`, an
unwritable folder, a deleted experiment); these cover what needs a GPU or an existing run.
"""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import TrainingState, checkpoint_path, save_checkpoint
from cifar_mlflow.cli import main as cifar_main
from cifar_mlflow.config import ConfigError, TrainConfig
from cifar_mlflow.environment import check_machine
from cifar_mlflow.studies import load_study
from cifar_mlflow.sweeps.sweep import run_sweep


def cuda_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as if it had a V100: CUDA present, compute capability 7.0.

    `torch.cuda.is_bf16_supported()` answers True there, as torch does for a GPU that only
    emulates bf16 (its default `including_emulation=True`); only the capability tells.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch, tmp_path, device):
    cuda_without_bf16(monkeypatch)
    config = TrainConfig(device=device, precision="bf16", checkpoint_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="precision 'bf16' needs a GPU that computes bf16"):
        check_machine(config)


def test_bf16_on_an_ampere_gpu_passes(monkeypatch, tmp_path):
    cuda_without_bf16(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    check_machine(TrainConfig(device="cuda", precision="bf16", checkpoint_dir=str(tmp_path)))


def test_bf16_elsewhere_and_auto_precision_on_that_gpu_pass(monkeypatch, tmp_path):
    check_machine(TrainConfig(device="cpu", precision="bf16", checkpoint_dir=str(tmp_path)))
    cuda_without_bf16(monkeypatch)
    check_machine(TrainConfig(device="cuda", precision="auto", checkpoint_dir=str(tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resuming_a_run_whose_device_is_absent_is_refused_and_leaves_it_alone(
    tracking_store, tmp_path, capsys
):
    client = MlflowClient()
    config = TrainConfig(model="mlp", device="cuda", checkpoint_dir=str(tmp_path / "ckpt"))
    experiment_id = client.create_experiment("elsewhere")
    run_id = client.create_run(experiment_id).info.run_id
    for name, value in config.to_params().items():
        client.log_param(run_id, name, value)
    client.set_terminated(run_id, "KILLED")
    state = TrainingState(
        epoch=1,
        model={},
        optimizer={},
        generator=torch.Generator().get_state(),
        torch_rng=torch.get_rng_state(),
    )
    save_checkpoint(checkpoint_path(config.checkpoint_dir, run_id), state)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        cifar_main(["train", "--resume", run_id])

    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("Error: device 'cuda' is not available on this machine; available:")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and schema.METRIC_TRAIN_LOSS not in run.data.metrics
    assert len(client.search_runs([experiment_id])) == 1


def test_a_sweep_checks_each_precision_its_study_varies(monkeypatch, tracking_store, tmp_path):
    cuda_without_bf16(monkeypatch)
    path = tmp_path / "precisions.yaml"
    path.write_text("model: mlp\ngrid:\n  precision: [bf16, fp32]\n")
    with pytest.raises(ConfigError, match="precision 'bf16' needs a GPU that computes bf16"):
        run_sweep(load_study(str(path)), {"checkpoint_dir": str(tmp_path / "ckpt")})
    assert (
        MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
        == []
    )
