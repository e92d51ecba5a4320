"""The evaluation batch's memory estimate against measured peaks (issue 17, item 9).

The measured peak is the largest number of bytes held at once by the tensors an inference
forward pass creates, each counted from the operation that allocates its storage until the
last tensor on that storage is freed (a dispatch mode sees every operation). On a CPU with a
fixed mmap threshold the process's peak RSS agrees with it (ResNet18: 1.30 against 1.31 MB
per image).
"""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cifar_mlflow import environment
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.eval_memory import (
    MEMORY_SHARE,
    activation_bytes_per_image,
    batch_that_fits,
    with_eval_batch_for_memory,
)
from cifar_mlflow.models import build_model

GB = 1 << 30


class LiveTensorBytes(TorchDispatchMode):
    """The peak of bytes held by the storages that the operations inside it allocate."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.owners: dict[int, int] = {}  # storage address → tensors on it still alive

    def release(self, address: int, nbytes: int) -> None:
        self.owners[address] -= 1
        if not self.owners[address]:
            del self.owners[address]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                address, nbytes = storage.data_ptr(), storage.nbytes()
                if address not in self.owners:
                    self.owners[address] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.owners[address] += 1
                weakref.finalize(tensor, self.release, address, nbytes)
        return output


def model_and_env(**changes):
    config = TrainConfig.from_overrides({"device": "cpu", "precision": "fp32", **changes})
    env = environment.environment_for(config)
    model = build_model(config, 10).to(memory_format=env.memory_format).eval()
    return model, env


def images(count: int, env: environment.Environment) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32).contiguous(memory_format=env.memory_format)


def measured_peak(model, batch: torch.Tensor) -> int:
    mode = LiveTensorBytes()
    with torch.inference_mode(), mode:
        model(batch)
    return mode.peak


@pytest.mark.parametrize(
    "model",
    [
        {"model": "mlp"},
        {"model": "mlp", "hidden_sizes": (4096, 4096)},
        {"model": "resnet18"},
        {"model": "mlpmixer"},
        {"model": "mlpmixer", "patch_size": 2, "embed_dim": 128, "num_blocks": 2},
    ],
)
def test_the_estimate_bounds_the_measured_peak_within_a_factor_of_two(model: dict) -> None:
    net, env = model_and_env(**model)
    per_image = activation_bytes_per_image(net, images(1, env), env)
    for batch in (4, 16):
        peak = measured_peak(net, images(batch, env))
        # Never below what is used (no out-of-memory), and not so far above that the GPU's
        # batch shrinks for nothing.
        assert peak <= per_image * batch <= 2 * peak, (batch, peak, per_image)


def test_the_batch_takes_a_share_of_the_memory_left_and_stays_within_its_limit() -> None:
    assert batch_that_fits(per_image=10 * 2**20, available=80 * GB, limit=5_000) == int(
        80 * GB * MEMORY_SHARE
    ) // (10 * 2**20)
    assert batch_that_fits(per_image=1_000, available=80 * GB, limit=5_000) == 5_000
    assert batch_that_fits(per_image=100 * GB, available=1 * GB, limit=5_000) == 1


def pretend_cuda(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)


def on_cuda(env: environment.Environment) -> environment.Environment:
    return dataclasses.replace(
        env, device=torch.device("cuda"), eval_batch_size=environment.GPU_EVAL_BATCH_SIZE
    )


def test_a_wide_mixer_gets_a_smaller_evaluation_batch_than_the_whole_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pretend_cuda(monkeypatch, free=16 * GB)
    mixer, env = model_and_env(model="mlpmixer", patch_size=2, embed_dim=512, num_blocks=1)
    capped = with_eval_batch_for_memory(on_cuda(env), mixer, images(1, env))
    per_image = activation_bytes_per_image(mixer, images(1, env), env)
    assert capped.eval_batch_size < environment.GPU_EVAL_BATCH_SIZE
    assert capped.eval_batch_size * per_image <= 16 * GB * MEMORY_SHARE

    mlp, env = model_and_env(model="mlp")
    assert with_eval_batch_for_memory(on_cuda(env), mlp, images(1, env)).eval_batch_size == (
        environment.GPU_EVAL_BATCH_SIZE
    )


def test_on_the_cpu_the_evaluation_batch_is_left_alone() -> None:
    mixer, env = model_and_env(model="mlpmixer", patch_size=2, embed_dim=512, num_blocks=1)
    assert with_eval_batch_for_memory(env, mixer, images(1, env)) is env
