"""Early stopping of a searched trial: each epoch's `valid_acc` to the search, which may stop it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn

from cifar_mlflow.engine import Callback, StopTraining
from cifar_mlflow.schema import EpochMetrics


class Judge(Protocol):
    """The search's state (`SearchState`, or its proxy in a Ray actor)."""

    def report(self, number: int, epoch: int, valid_acc: float) -> str | None:
        """Record an epoch of trial `number`; why to stop the trial now, or None."""
        ...


class EarlyStopping(Callback):
    """Reports each epoch to `judge` at the epoch boundary; stops the trial when it says so.

    A resumed trial first reports the epochs its checkpoint holds, so that the pruner judges it
    on its whole curve. The last epoch is reported too (the other trials are compared with it),
    but stopping there would only drop the trial's test split.
    """

    def __init__(self, judge: Judge, number: int) -> None:
        self.judge = judge
        self.number = number  # the trial's number in `judge`
        self.num_epochs = 0

    def on_train_start(
        self,
        model: nn.Module,
        num_epochs: int,
        batches_per_epoch: int,
        completed: Sequence[EpochMetrics],
    ) -> None:
        self.num_epochs = num_epochs
        for metrics in completed:
            self.judge.report(self.number, metrics.epoch, metrics.valid_acc)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        reason = self.judge.report(self.number, metrics.epoch, metrics.valid_acc)
        if reason is not None and metrics.epoch < self.num_epochs:
            raise StopTraining(reason)
