"""Pure parts of `analysis.search` (frames, figures, table) on hand-made frames: no tracking."""

from __future__ import annotations

import io
import math

import pandas as pd

from analysis import search_frames, tables
from analysis.search import top_columns
from analysis.search_plots import best_so_far_figure, learning_curves_figure, params_figure
from cifar_mlflow import schema

# Four trials: 1 and 3 complete, 2 and 4 stopped (4 with the best epoch of all, before its stop;
# 2 by a release that did not record why).
TRIALS = pd.DataFrame(
    {
        "run_id": ["a", "b", "c", "d"],
        "run_name": ["mlp"] * 4,
        f"tags.{schema.TAG_TRIAL_NUMBER}": ["1", "2", "3", "4"],
        f"tags.{schema.TAG_STOPPED_AT_EPOCH}": [None, "1", None, "2"],
        f"tags.{schema.TAG_STOPPED_REASON}": [
            None,
            None,
            None,
            f"{schema.METRIC_VALID_ACC} 0.80 below the median 0.90",
        ],
        "params.lr": ["0.001", "1e-05", "0.01", "0.003"],
        "params.activation": ["relu", "tanh", "relu", "sigmoid"],
        f"metrics.{schema.METRIC_TEST_ACC}": [0.9, float("nan"), 0.5, float("nan")],
    }
).sample(frac=1, random_state=0)  # the query's order is not the trials' order
CURVES = {"a": [0.5, 0.6, 0.7], "b": [0.1], "c": [0.6, 0.65, 0.66], "d": [0.2, 0.8]}
VALID_ACC = pd.DataFrame(
    [
        (run_id, schema.METRIC_VALID_ACC, epoch, 1000 + epoch, value)
        for run_id, values in CURVES.items()
        for epoch, value in enumerate(values, start=1)
    ],
    columns=["run_id", "metric", "step", "timestamp", "value"],
)
NAMES = ("lr", "activation")


def search() -> pd.DataFrame:
    return search_frames.search_trials(TRIALS, VALID_ACC, NAMES)


def test_search_trials_are_ordered_by_number_with_their_end_and_best_epoch():
    frame = search()
    assert list(frame[schema.TAG_TRIAL_NUMBER]) == [1, 2, 3, 4]
    assert list(frame["outcome"]) == ["complete", "stopped", "complete", "stopped"]
    assert list(frame[schema.TAG_STOPPED_AT_EPOCH].astype("float").fillna(0)) == [0, 1, 0, 2]
    assert list(frame["objective"]) == [0.7, 0.1, 0.66, 0.8]
    assert list(frame["lr"]) == [0.001, 1e-05, 0.01, 0.003]
    assert list(frame["activation"]) == ["relu", "tanh", "relu", "sigmoid"]


def test_each_stopped_trial_has_a_line_with_its_epoch_and_the_pruners_reason():
    assert search_frames.stopped_lines(search()) == [
        "Trial 2 (mlp) stopped at epoch 1",
        f"Trial 4 (mlp) stopped at epoch 2: {schema.METRIC_VALID_ACC} 0.80 below the median 0.90",
    ]


def test_best_so_far_counts_complete_trials_only():
    assert list(search_frames.best_so_far(search())) == [0.7, 0.7, 0.7, 0.7]


def test_top_trials_are_complete_ones_by_validation_never_by_test_accuracy():
    top = search_frames.top_trials(search(), NAMES)
    assert list(top[schema.TAG_TRIAL_NUMBER]) == [1, 3]
    # Trial 3 with by far the better test accuracy still ranks after trial 1.
    swapped = TRIALS.assign(
        **{f"metrics.{schema.METRIC_TEST_ACC}": TRIALS["run_id"].map({"a": 0.1, "c": 0.99})}
    )
    top = search_frames.top_trials(search_frames.search_trials(swapped, VALID_ACC, NAMES), NAMES)
    assert list(top[schema.TAG_TRIAL_NUMBER]) == [1, 3]


def test_the_top_trials_table_in_each_format():
    top = search_frames.top_trials(search(), NAMES)
    columns = top_columns(top, NAMES)
    markdown = tables.render(top, columns, "markdown")
    assert "| Trial | lr | activation | Best valid accuracy (%) | Test accuracy (%) |" in markdown
    assert "| 1 | 0.001 | relu | 70.00 | 90.00 |" in markdown
    parsed = pd.read_csv(io.StringIO(tables.render(top, columns, "csv")))
    assert list(parsed["objective"]) == [0.7, 0.66]
    assert r"\toprule" in tables.render(top, columns, "latex")


def test_searched_kinds_come_from_the_study_file():
    text = "search:\n  lr: {log_uniform: [1.0e-5, 0.1]}\n  activation: {choice: [relu, tanh]}\n"
    assert search_frames.searched_kinds(text) == {"lr": "log_uniform", "activation": "choice"}


def test_params_figure_has_a_log_axis_for_log_ranges_and_named_choices():
    kinds = {"lr": "log_uniform", "activation": "choice"}
    figure = params_figure(search(), NAMES, kinds, "t")
    lr_ax, activation_ax = figure.axes
    assert lr_ax.get_xscale() == "log"
    assert activation_ax.get_xscale() == "linear"
    assert [t.get_text() for t in activation_ax.get_xticklabels()] == ["relu", "sigmoid", "tanh"]
    linear = params_figure(search(), NAMES, {"lr": "uniform", "activation": "choice"}, "t")
    assert linear.axes[0].get_xscale() == "linear"


def test_learning_curves_mark_each_stopped_trial_where_it_stopped():
    figure = learning_curves_figure(VALID_ACC, search(), "t")
    (ax,) = figure.axes
    crosses = [line for line in ax.lines if line.get_marker() == "x" and len(line.get_xdata())]
    assert sorted((x[0], round(y[0], 6)) for x, y in (c.get_data() for c in crosses)) == [
        (1, 10.0),
        (2, 80.0),
    ]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["trial 1", "trial 3"] and "stopped early" in labels[-1]


def test_best_so_far_figure_draws_the_running_best_as_a_step():
    figure = best_so_far_figure(search(), "t")
    (ax,) = figure.axes
    (step,) = [line for line in ax.lines if line.get_label() == "best so far"]
    assert [v for v in step.get_ydata() if not math.isnan(v)] == [70.0] * 4
