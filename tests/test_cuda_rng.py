"""Checkpoints carry the random stream of every CUDA device, and a resume restores each one.

Dropout on a GPU draws from the device's own generator, not the CPU's: without its state a
resumed run would drop other units than the uninterrupted one. There is no GPU here, so
torch.cuda's random-state functions are replaced by a fake of several devices whose streams
advance with every training batch, as dropout advances them.
"""

from __future__ import annotations

import pytest
import torch

from cifar_mlflow import engine, environment
from cifar_mlflow.checkpoint import load_checkpoint
from cifar_mlflow.engine import Callback
from tests.test_engine import small_config, tiny_data


class FakeCudaDevices(Callback):
    """torch.cuda's random-state functions for `count` devices; each training batch advances
    every device's stream, as dropout there would.

    The devices count as available only until training starts: the optimiser's step asks
    torch.cuda too, and would then look for a real device.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int, start: int = 0) -> None:
        self.states = [torch.full((16,), start + i, dtype=torch.uint8) for i in range(count)]
        self.restored: list[tuple[int, torch.Tensor]] = []
        self.available = True
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self.get_rng_state_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        # `torch.manual_seed` seeds every CUDA device too; there are none to seed.
        monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [state.clone() for state in self.states]

    def set_rng_state(self, state: torch.Tensor, device: int | str = "cuda") -> None:
        self.restored.append((device, state.clone()))
        self.states[device] = state.clone()

    def on_train_start(self, *args: object) -> None:
        self.available = False

    def on_batch_end(self) -> None:
        self.states = [state + 1 for state in self.states]


def train_with_checkpoint(tmp_path, devices: FakeCudaDevices, epochs: int):
    config = small_config(epochs=epochs)
    env = environment.environment_for(config)
    path = tmp_path / "last.pt"
    engine.fit(config, tiny_data(), env, [devices], checkpoint=path)
    return env, load_checkpoint(path)


def test_a_checkpoint_holds_every_cuda_device_stream_as_of_its_epoch(monkeypatch, tmp_path):
    devices = FakeCudaDevices(monkeypatch, count=2)
    _, state = train_with_checkpoint(tmp_path, devices, epochs=2)
    assert state.epoch == 2
    assert len(state.cuda_rng) == 2
    for saved, now in zip(state.cuda_rng, devices.states, strict=True):
        assert torch.equal(saved, now)  # the streams after the epoch's last batch
    assert not torch.equal(state.cuda_rng[0], state.cuda_rng[1])


@pytest.mark.parametrize("devices_now", [2, 1])
def test_a_resume_restores_each_device_stream_it_has(monkeypatch, tmp_path, devices_now):
    first = FakeCudaDevices(monkeypatch, count=2)
    env, state = train_with_checkpoint(tmp_path, first, epochs=1)
    resumed = FakeCudaDevices(monkeypatch, count=devices_now, start=100)  # another process
    engine.fit(small_config(epochs=2), tiny_data(), env, [resumed], resume=state)
    # Device i gets device i's saved stream, before the first resumed batch draws from it.
    assert [device for device, _ in resumed.restored] == list(range(devices_now))
    for (_, restored), saved in zip(resumed.restored, state.cuda_rng, strict=False):
        assert torch.equal(restored, saved)
    batches = -(-len(tiny_data().train) // small_config().batch_size)
    for now, saved in zip(resumed.states, state.cuda_rng, strict=False):
        assert torch.equal(now, saved + batches)  # epoch 2 drew on from the restored streams


def test_a_checkpoint_without_cuda_restores_no_device(monkeypatch, tmp_path):
    config = small_config(epochs=1)
    env = environment.environment_for(config)
    path = tmp_path / "last.pt"
    engine.fit(config, tiny_data(), env, checkpoint=path)  # CUDA never initialised
    state = load_checkpoint(path)
    assert state.cuda_rng == []
    devices = FakeCudaDevices(monkeypatch, count=2, start=100)
    engine.fit(small_config(epochs=2), tiny_data(), env, [devices], resume=state)
    assert devices.restored == []
