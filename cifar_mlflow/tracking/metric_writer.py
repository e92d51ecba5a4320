"""A run's metrics, delivered to the tracking server exactly once whatever it answers.

MLflow's asynchronous logging (`log_batch(synchronous=False)`) drops a batch the server
answers with an error once its client's own retries are spent, with only an ERROR line: under
a saturated team server (its database pool exhausted, 5xx for a while) epochs went missing.
Here each batch is written synchronously by a thread of the writer, so training never waits on
the server; a failed write is tried again with exponential back-off until it arrives; the run's
end waits for every batch. Only a server that stays unreachable for `gone_after_s` (no answer
even to its health check) fails the run, loudly, with the epochs that did not arrive.

Exactly once: a metric point is (key, step, timestamp, value), and the timestamp is taken
when the batch is queued, not when it is sent. A retry after a write the server applied but
could not answer (or applied in part) sends the same points again; the SQL store, MLflow's
server back end, keys metrics on all four and skips the ones it holds, so no point is doubled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.utils.time import get_current_time_millis

from cifar_mlflow.reachability import healthy, is_server_uri, redact_uri

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0
GONE_AFTER_S = 600.0  # an outage the run outlives: the README's promise
# Answers about the request, not the server's state: a bad value, a run deleted or ended.
REFUSED_FOR_GOOD = {
    ErrorCode.Name(code)
    for code in (INVALID_PARAMETER_VALUE, INVALID_STATE, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST)
}

_logger = logging.getLogger(__name__)


class MetricsLostError(RuntimeError):
    """The tracking server stayed away; the metrics named in the message never arrived."""


def server_answers(tracking_uri: str) -> bool:
    """Whether the store is there to take a retry: a server answering its health check."""
    return not is_server_uri(tracking_uri) or healthy(tracking_uri)


class MetricWriter:
    """Writes `run_id`'s metric batches in order, in a thread, each exactly once."""

    def __init__(
        self,
        run_id: str,
        *,
        gone_after_s: float = GONE_AFTER_S,
        first_retry_s: float = FIRST_RETRY_S,
        answers: Callable[[str], bool] = server_answers,
    ) -> None:
        self.run_id = run_id
        self.gone_after_s = gone_after_s
        self.first_retry_s = first_retry_s
        self.answers = answers
        self.tracking_uri = mlflow.get_tracking_uri()
        self._client = MlflowClient(self.tracking_uri)  # one per run, used by its thread only
        self._thread = ThreadPoolExecutor(1, "metric-writer")
        self._writes: list[Future] = []

    def write(self, values: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        """Queue one batch; returns at once (raises a batch's loss that is already known)."""
        self._raise_lost(done_only=True)
        now = get_current_time_millis()  # fixed now: every retry sends the very same points
        metrics = [
            Metric(key, float(value), now, step, model_id=model_id) for key, value in values.items()
        ]
        self._writes.append(self._thread.submit(self._deliver, metrics))

    def close(self) -> None:
        """Wait until every batch has arrived; raise if the server was gone for good."""
        self._thread.shutdown(wait=True)
        self._raise_lost(done_only=False)

    def _raise_lost(self, done_only: bool) -> None:
        for write in self._writes:
            if (write.done() or not done_only) and write.exception() is not None:
                raise write.exception()

    def _deliver(self, metrics: list[Metric]) -> None:
        delay, unanswered_since = self.first_retry_s, None
        while True:
            try:
                self._client.log_batch(self.run_id, metrics=metrics)
                return
            except Exception as error:
                if isinstance(error, MlflowException) and error.error_code in REFUSED_FOR_GOOD:
                    raise  # the request itself is wrong: sending it again changes nothing
                if self.answers(self.tracking_uri):
                    unanswered_since = None
                else:
                    unanswered_since = unanswered_since or time.monotonic()
                    if time.monotonic() - unanswered_since >= self.gone_after_s:
                        raise MetricsLostError(self._lost_message(metrics, error)) from None
                reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
                _logger.warning(
                    "metrics of step %d not logged (%s); retrying in %.1f s",
                    metrics[0].step,
                    reason,
                    delay,
                )
                time.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_S)

    def _lost_message(self, metrics: list[Metric], error: Exception) -> str:
        return (
            f"tracking server {redact_uri(self.tracking_uri)} gone for {self.gone_after_s:g} s: "
            f"the metrics of step {metrics[0].step} of run {self.run_id} and later were not "
            f"logged ({type(error).__name__}); the checkpoint keeps every epoch: --resume "
            f"{self.run_id} logs them once the server is back"
        )
