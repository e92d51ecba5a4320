"""A diverged run stops in the epoch it diverged, with the reason: non-finite, or far above chance.

The weights are blown up by a callback before the first batch, so each branch is reached
deterministically: NaN weights give a NaN loss; weights 10⁴ times too large give a finite loss
far above chance level, which only the second check catches.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifar_mlflow import engine, environment, errors
from tests.test_engine import Recorder, small_config, tiny_data


class BlowUpOutputLayer(Recorder):
    """Multiplies the output layer's weights by `factor` before training starts."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def on_train_start(self, model: nn.Module, *args) -> None:
        super().on_train_start(model, *args)
        output_layer = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            output_layer.weight.mul_(self.factor)


@pytest.mark.parametrize(
    ("factor", "error", "message"),
    [
        (
            math.nan,
            errors.NonFiniteLossError,
            r"^non-finite training loss \(nan\) in epoch 1; lower lr \(now 0\.001\)$",
        ),
        (
            1e4,
            errors.DivergedLossError,
            r"^training loss diverged \([0-9.e+]+ > 230\.3, 100 × chance level\) in epoch 1; "
            r"lower lr \(now 0\.001\)$",
        ),
    ],
    ids=["non-finite", "finite-above-100x-chance"],
)
def test_a_diverged_loss_stops_the_run_in_that_epoch_with_its_reason(
    factor: float, error: type[Exception], message: str
) -> None:
    config = small_config(epochs=2, lr=1e-3)
    blow_up = BlowUpOutputLayer(factor)
    with pytest.raises(error, match=message) as raised:
        engine.fit(config, tiny_data(), environment.environment_for(config), [blow_up])
    assert type(raised.value) is error  # a finite loss is not called non-finite
    assert blow_up.epochs == []  # the diverged epoch is never reported


def test_a_loss_just_below_100x_chance_goes_on() -> None:
    limit = engine.DIVERGED_LOSS_FACTOR * math.log(10)
    engine.check_diverged(limit * 0.999, limit, epoch=1, lr=0.1)
    with pytest.raises(errors.DivergedLossError, match="diverged"):
        engine.check_diverged(limit * 1.001, limit, epoch=1, lr=0.1)
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(errors.NonFiniteLossError, match="non-finite"):
            engine.check_diverged(value, limit, epoch=1, lr=0.1)


def test_a_normal_run_is_not_stopped() -> None:
    config = small_config(epochs=2)
    recorder = BlowUpOutputLayer(factor=1.0)
    engine.fit(config, tiny_data(), environment.environment_for(config), [recorder])
    assert [m.epoch for m in recorder.epochs] == [1, 2]
