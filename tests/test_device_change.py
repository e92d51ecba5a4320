"""A run checkpointed on one device type continues on another (issue 17, defect 3).

No GPU here: the checkpoint of a CUDA run is fabricated from a CPU one, with what differs on
CUDA — a 16-byte generator state, CUDA random streams, optimiser moments in the contiguous
layout of a device that does not use channels-last — and resumed on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cifar_mlflow import checkpoint, engine, environment
from cifar_mlflow.checkpoint import TrainingState, load_checkpoint
from tests.test_engine import Recorder, small_config, tiny_data

CUDA_GENERATOR_STATE_BYTES = 16  # seed and offset of a Philox stream


def mixer_config(**changes):
    mixer = {"model": "mlpmixer", "embed_dim": 8, "num_blocks": 1, "patch_size": 8}
    return small_config(**{**mixer, **changes})


def checkpoint_after_one_epoch(tmp_path: Path) -> TrainingState:
    config = mixer_config(epochs=1)
    path = tmp_path / "run" / "last.pt"
    engine.fit(config, tiny_data(), environment.environment_for(config), checkpoint=path)
    return load_checkpoint(path)


def as_if_from_cuda(state: TrainingState) -> TrainingState:
    state.generator = torch.zeros(CUDA_GENERATOR_STATE_BYTES, dtype=torch.uint8)
    state.cuda_rng = [torch.zeros(CUDA_GENERATOR_STATE_BYTES, dtype=torch.uint8)]
    state.device_type = "cuda"
    for moments in state.optimizer["state"].values():
        for name, value in moments.items():
            moments[name] = value.contiguous()  # channels-last on the CPU, not here
    return state


def resumed(state: TrainingState) -> tuple[torch.nn.Module, Recorder]:
    config = mixer_config()
    recorder = Recorder()
    model, _ = engine.fit(
        config, tiny_data(), environment.environment_for(config), [recorder], resume=state
    )
    return model, recorder


def test_a_cuda_checkpoint_continues_on_the_cpu_deterministically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = checkpoint_after_one_epoch(tmp_path)
    stem_moment = state.optimizer["state"][0]["exp_avg"]
    assert stem_moment.dim() == 4 and not stem_moment.is_contiguous()  # channels-last here
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        model, recorder = resumed(as_if_from_cuda(state))
    assert "continuing on cpu a run checkpointed on cuda" in caplog.text
    assert [epoch.epoch for epoch in recorder.epochs] == [2]
    # Reseeded from the seed and the epoch: the same checkpoint continues the same way.
    again, _ = resumed(as_if_from_cuda(checkpoint_after_one_epoch(tmp_path)))
    for (name, weight), other in zip(
        model.state_dict().items(), again.state_dict().values(), strict=True
    ):
        assert torch.equal(weight, other), name


def test_optimizer_state_takes_its_parameters_layout_on_resume(tmp_path: Path) -> None:
    state = as_if_from_cuda(checkpoint_after_one_epoch(tmp_path))
    config = mixer_config()
    model = engine.build_model(config, 10).to(memory_format=torch.channels_last)
    optimizer = engine.build_optimizer(config, model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint.restore_training_state(state, model, optimizer, generator, config.seed)
    for param in model.parameters():
        for name, value in optimizer.state[param].items():
            if value.shape == param.shape:
                assert value.stride() == param.stride(), name


def test_every_optimiser_moment_is_restored_on_another_device_type(tmp_path: Path) -> None:
    """Each moment (and step count) equals the checkpoint's, not a fresh optimiser's zeros."""
    saved = checkpoint_after_one_epoch(tmp_path)
    saved_moments = {
        index: {name: value.clone() for name, value in moments.items()}
        for index, moments in saved.optimizer["state"].items()
    }
    config = mixer_config()
    model = engine.build_model(config, 10).to(memory_format=torch.channels_last)
    optimizer = engine.build_optimizer(config, model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint.restore_training_state(
        as_if_from_cuda(saved), model, optimizer, generator, config.seed
    )
    restored = optimizer.state_dict()["state"]
    assert len(saved_moments) == len(list(model.parameters()))  # Adam holds state for each
    assert restored.keys() == saved_moments.keys()
    for index, moments in saved_moments.items():
        assert restored[index].keys() == moments.keys()
        for name, value in moments.items():
            assert torch.equal(restored[index][name], value), (index, name)
    assert any(
        value.abs().sum() > 0 for moments in saved_moments.values() for value in moments.values()
    )
