"""Training progress for people: a bar per epoch on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import click
from torch import nn
from tqdm import tqdm

from cifar_mlflow import schema
from cifar_mlflow.engine import Callback
from cifar_mlflow.schema import EpochMetrics, FinalMetrics

# The metrics a progress line shows, by name, with their format.
EPOCH_SHOWN = (
    (schema.METRIC_TRAIN_LOSS, ".4f"),
    (schema.METRIC_TRAIN_ACC, ".3f"),
    (schema.METRIC_VALID_LOSS, ".4f"),
    (schema.METRIC_VALID_ACC, ".3f"),
)
FINAL_SHOWN = (
    (schema.METRIC_TEST_ACC, ".4f"),
    (schema.METRIC_TEST_LOSS, ".4f"),
    (schema.METRIC_BEST_VALID_ACC, ".4f"),
)


def named(values: Mapping[str, float], shown: Sequence[tuple[str, str]]) -> str:
    """`train_loss 0.1234 train_acc 0.567`: the `shown` metrics of `values`, formatted."""
    return " ".join(f"{name} {values[name]:{spec}}" for name, spec in shown)


class ProgressCallback(Callback):
    def __init__(self, label: str, interactive: bool | None = None) -> None:
        self.label = label
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar: tqdm | None = None

    def on_train_start(
        self,
        model: nn.Module,
        num_epochs: int,
        batches_per_epoch: int,
        completed: Sequence[EpochMetrics],
    ) -> None:
        self.num_epochs = num_epochs
        self.batches_per_epoch = batches_per_epoch
        if completed:
            click.echo(f"{self.label}: resumed after epoch {len(completed)}", err=True)
        if len(completed) < num_epochs:
            self._open_bar(epoch=len(completed) + 1)

    def _open_bar(self, epoch: int) -> None:
        if self.interactive:
            self.bar = tqdm(
                total=self.batches_per_epoch,
                desc=f"{self.label} epoch {epoch}/{self.num_epochs}",
                unit="batch",
                leave=True,
                file=sys.stderr,
            )

    def on_batch_end(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        summary = f"{named(metrics.metrics(), EPOCH_SHOWN)} ({metrics.epoch_time_s:.1f} s)"
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.close()
            if metrics.epoch < self.num_epochs:
                self._open_bar(metrics.epoch + 1)
        else:
            click.echo(f"{self.label} epoch {metrics.epoch}/{self.num_epochs}: {summary}", err=True)

    def on_train_stopped(self, epoch: int, reason: str) -> None:
        if self.bar is not None:
            self.bar.close()
        click.echo(f"{self.label}: stopped at epoch {epoch}: {reason}", err=True)

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        click.echo(
            f"{self.label}: {named(metrics.metrics(), FINAL_SHOWN)}",
            err=True,
        )
