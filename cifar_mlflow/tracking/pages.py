"""Every search of the tracking server, page by page: runs, experiments, registered models.

MLflow answers a search one page at a time; `all_pages` is the one loop that follows the page
tokens, and `search_runs` the one run search of the project (training, sweeps, the registry
and the analysis all use it). No torch here: the analysis imports this module too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.store.entities.paged_list import PagedList

from cifar_mlflow import schema

T = TypeVar("T")
# One page of search results; MLflow caps it at 50,000 (more pages are fetched when needed).
PAGE_SIZE = 5_000
NEWEST_FIRST = ("attributes.start_time DESC",)
FINISHED = "attributes.status = 'FINISHED'"


def all_pages(fetch: Callable[[str | None], PagedList[T]], limit: int | None = None) -> list[T]:
    """The items of every page `fetch(page_token)` returns (at most `limit` of them)."""
    items: list[T] = []
    token = None
    while True:
        page = fetch(token)
        items += page
        token = page.token
        if not token or (limit is not None and len(items) >= limit):
            return items[:limit]


def search_runs(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    filter_string: str,
    *,
    order_by: Sequence[str] = NEWEST_FIRST,
    limit: int | None = None,
) -> list[Run]:
    """Every run of the experiments that matches `filter_string` (the first `limit`)."""
    page_size = min(limit or PAGE_SIZE, PAGE_SIZE)
    return all_pages(
        lambda token: client.search_runs(
            list(experiment_ids),
            filter_string,
            max_results=page_size,
            order_by=list(order_by),
            page_token=token,
        ),
        limit,
    )


def quoted(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def finished_sweep_trials(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    reused_run_ids: Sequence[str],
    reused_experiment_ids: Sequence[str] | None = None,
) -> list[Run]:
    """A sweep's finished trials: its own children, then the runs of earlier sweeps it reused.

    The reused runs are looked up in `reused_experiment_ids` (default: the sweep's own).
    """
    children = search_runs(
        client,
        [experiment_id],
        f"tags.`{schema.TAG_PARENT_RUN_ID}` = {quoted(parent_run_id)} AND {FINISHED}",
    )
    if not reused_run_ids:
        return children
    ids = ", ".join(quoted(run_id) for run_id in reused_run_ids)
    reused = search_runs(
        client,
        reused_experiment_ids or [experiment_id],
        f"attributes.run_id IN ({ids}) AND {FINISHED}",
    )
    return [*children, *reused]
