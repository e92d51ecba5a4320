"""What the environment picks on CUDA (issue 17), with the device's answers substituted.

No GPU here: `torch.cuda.get_device_capability` is replaced by the answer of each GPU
generation, and the global backend flags `environment_for` sets are restored after each test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cifar_mlflow import engine, environment
from cifar_mlflow.config import TrainConfig, model_names
from cifar_mlflow.models import build_model
from cifar_mlflow.training_options import TrainingCommand, overrides_from
from tests.test_engine import small_config, tiny_data

V100, T4, A100, H100 = (7, 0), (7, 5), (8, 0), (9, 0)
# Modules whose CUDA backward has no deterministic kernel (torch.use_deterministic_algorithms'
# documentation): with `--deterministic`, a model holding one could not train on a GPU.
NONDETERMINISTIC_ON_CUDA = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool3d,
    nn.FractionalMaxPool2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.Upsample,
    nn.EmbeddingBag,
)


@pytest.fixture(autouse=True)
def backend_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever `environment_for` sets globally is put back after the test."""
    flags = [
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
    ]
    before = [getattr(owner, name) for owner, name in flags]
    deterministic = torch.are_deterministic_algorithms_enabled()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    for (owner, name), value in zip(flags, before, strict=True):
        setattr(owner, name, value)
    torch.use_deterministic_algorithms(deterministic)


def on_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], **changes):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return environment.environment_for(TrainConfig(device="cuda", **changes))


@pytest.mark.parametrize(
    ("capability", "precision"),
    [(V100, "fp32"), (T4, "fp32"), (A100, "bf16"), (H100, "bf16")],
)
def test_precision_auto_is_bf16_on_cuda_only_from_ampere(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], precision: str
) -> None:
    env = on_gpu(monkeypatch, capability)
    assert env.precision == precision
    assert env.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)


def test_the_precision_tag_says_tf32_where_fp32_matmuls_run_in_tf32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = on_gpu(monkeypatch, A100, precision="fp32")
    assert env.precision == "tf32"
    with environment.torch_settings(env):
        assert torch.backends.cuda.matmul.allow_tf32
    assert on_gpu(monkeypatch, V100, precision="fp32").precision == "fp32"  # no TF32 cores
    assert environment.environment_for(TrainConfig(device="cpu", precision="fp32")).precision == (
        "fp32"
    )


def test_deterministic_turns_autotuning_off_and_deterministic_kernels_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with environment.torch_settings(on_gpu(monkeypatch, H100)):
        assert torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
    with environment.torch_settings(on_gpu(monkeypatch, H100, deterministic=True)):
        assert not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert environment.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG" not in environment.os.environ


def global_torch_state() -> tuple:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        environment.os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


class GlobalStateDuringTraining(engine.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_epoch_end(self, metrics) -> None:
        self.seen.append(global_torch_state())


def test_two_trials_of_opposite_settings_in_one_process_each_see_only_their_own() -> None:
    """A sweep's trials share the process: the first's global settings must not reach the next."""
    torch.backends.cudnn.benchmark = False
    before = global_torch_state()
    seen = []
    for deterministic in (True, False):
        recorder = GlobalStateDuringTraining()
        config = small_config(deterministic=deterministic, epochs=1)
        engine.fit(config, tiny_data(), environment.environment_for(config), [recorder])
        seen.append(recorder.seen[0])
        assert global_torch_state() == before  # restored when the trial ends
    (_, _, det_benchmark, det_kernels, det_workspace), free = seen
    assert det_kernels and not det_benchmark and det_workspace == ":4096:8"
    assert free[2:] == (True, False, None)  # autotuned, not deterministic, no workspace


def test_settings_are_restored_when_a_trial_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    before = global_torch_state()
    env = on_gpu(monkeypatch, H100, deterministic=True)
    with pytest.raises(RuntimeError), environment.torch_settings(env):
        raise RuntimeError("the trial failed")
    assert global_torch_state() == before


@pytest.mark.parametrize("model", model_names())
def test_no_model_holds_a_module_without_a_deterministic_cuda_backward(model: str) -> None:
    modules = build_model(TrainConfig(model=model), 10).modules()
    assert not [type(m).__name__ for m in modules if isinstance(m, NONDETERMINISTIC_ON_CUDA)]


@pytest.mark.parametrize(("device", "mode"), [("cuda", "reduce-overhead"), ("cpu", None)])
def test_compile_captures_cuda_graphs_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch, device: str, mode: str | None
) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: H100)
    config = TrainConfig(device=device)
    for compile in (True, False):
        env = environment.environment_for(dataclasses.replace(config, compile=compile))
        env.compiled(nn.Linear(2, 2))
    assert calls == [{"dynamic": False, "mode": mode}]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], (False, False)),
        (["--compile", "--deterministic"], (True, True)),
        (["--compile", "false", "--deterministic", "true"], (False, True)),  # as `mlflow run`
    ],
)
def test_compile_and_deterministic_are_switches_that_also_take_a_value(
    args: list[str], expected: tuple[bool, bool]
) -> None:
    seen = []

    def command(**options: str) -> None:
        config = TrainConfig.from_overrides(overrides_from(options))
        seen.append((config.compile, config.deterministic))

    result = CliRunner().invoke(
        click.command(cls=TrainingCommand)(command), [*args, "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [expected]


def test_how_kernels_run_leaves_the_trial_key_alone() -> None:
    base = TrainConfig()
    assert dataclasses.replace(base, compile=True, deterministic=True).trial_key() == (
        base.trial_key()
    )
    # The key of the default configuration before these options existed (commit d9ac25d):
    # finished trials of earlier sweeps are still found and reused.
    assert base.trial_key() == "516989f00dcbe11a"


def test_on_the_cpu_deterministic_kernels_change_nothing() -> None:
    """docs/gpus.md's claim: the CPU is exact with or without `--deterministic`."""
    weights = []
    for deterministic in (False, True):
        config = small_config(deterministic=deterministic, epochs=1)
        model, _ = engine.fit(config, tiny_data(), environment.environment_for(config))
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
