"""Pure parts of `analysis` (frames, tables, plots) on hand-made frames: no tracking store."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from analysis import frames, tables
from analysis.plots import CURVE_METRICS, curves_figure, png_bytes
from cifar_mlflow import schema


def make_trials(rows: list[dict]) -> pd.DataFrame:
    """Trials in the layout `analysis.query` returns: run_id, run_name, params.*, metrics.*."""
    return pd.DataFrame(
        [
            {
                "run_id": f"r{i}",
                "run_name": f"run{i}",
                "experiment_id": "1",
                **{f"params.{k}": v for k, v in row.items() if k != "metrics"},
                **{f"metrics.{k}": v for k, v in row.get("metrics", {}).items()},
            }
            for i, row in enumerate(rows)
        ]
    )


def make_history(run_ids: list[str], epochs: int, value_of) -> pd.DataFrame:
    return pd.DataFrame(
        [
            (run_id, metric, step, 1000 + step, value_of(run_id, metric, step))
            for run_id in run_ids
            for metric in CURVE_METRICS
            for step in range(1, epochs + 1)
        ],
        columns=["run_id", "metric", "step", "timestamp", "value"],
    )


def test_settings_parse_numbers_so_spellings_of_one_value_group_together():
    trials = make_trials(
        [{"lr": "1e-3", "seed": "1"}, {"lr": "0.001", "seed": "2"}, {"lr": "0.1", "seed": "1"}]
    )
    settings = frames.with_settings(trials, ["lr"])["setting"]
    assert list(settings) == ["lr = 0.001", "lr = 0.001", "lr = 0.1"]
    assert list(settings.cat.categories) == ["lr = 0.001", "lr = 0.1"]  # numeric order


def test_settings_of_several_fields_and_words():
    trials = make_trials(
        [
            {"activation": "tanh", "batch_size": "64"},
            {"activation": "relu", "batch_size": "128"},
            {"activation": "relu", "batch_size": "64"},
        ]
    )
    settings = frames.with_settings(trials, ["activation", "batch_size"])["setting"]
    assert list(settings.cat.categories) == [
        "activation = relu, batch_size = 64",
        "activation = relu, batch_size = 128",
        "activation = tanh, batch_size = 64",
    ]


def test_without_varied_fields_all_trials_are_one_setting():
    settings = frames.with_settings(make_trials([{"seed": "1"}, {"seed": "2"}]), [])["setting"]
    assert set(settings) == {frames.FIXED_SETTING}


def test_curves_average_seeds_and_keep_min_and_max():
    trials = frames.with_settings(
        make_trials([{"lr": "0.1"}, {"lr": "0.1"}, {"lr": "0.01"}]), ["lr"]
    )
    offsets = {"r0": 0.0, "r1": 0.2, "r2": 1.0}
    history = make_history(["r0", "r1", "r2"], 3, lambda run, _, step: step + offsets[run])
    curves = frames.curves(history, trials)
    row = curves[
        (curves["setting"] == "lr = 0.1")
        & (curves["metric"] == schema.METRIC_VALID_ACC)
        & (curves["step"] == 2)
    ].iloc[0]
    assert (row["mean"], row["min"], row["max"], row["seeds"]) == pytest.approx((2.1, 2, 2.2, 2))
    single = curves[curves["setting"] == "lr = 0.01"]
    assert set(single["seeds"]) == {1} and (single["min"] == single["max"]).all()
    assert len(curves) == 2 * len(CURVE_METRICS) * 3


def test_curves_count_a_value_logged_twice_at_one_step_once_with_its_latest_value():
    trials = frames.with_settings(make_trials([{"lr": "0.1"}]), ["lr"])
    history = pd.DataFrame(
        [
            ("r0", schema.METRIC_TRAIN_LOSS, 1, 2000, 0.5),
            ("r0", schema.METRIC_TRAIN_LOSS, 1, 1000, 9.0),
        ],
        columns=["run_id", "metric", "step", "timestamp", "value"],
    )
    curves = frames.curves(history, trials)
    assert list(curves["mean"]) == [0.5] and list(curves["seeds"]) == [1]


def table1_trials(seeds: int) -> pd.DataFrame:
    return make_trials(
        [
            {
                "patch_size": str(patch),
                "seed": str(seed),
                "metrics": {
                    schema.METRIC_NUM_PARAMS: 1000.0 * patch,
                    schema.METRIC_INFERENCE_TIME_S: 0.1 / patch + 0.01 * seed,
                    schema.METRIC_TRAIN_EPOCH_TIME_S: 10.0 / patch + seed,
                    schema.METRIC_TEST_ACC: 0.8 - 0.01 * patch + 0.02 * seed,
                },
            }
            for patch in (16, 2, 8, 4)
            for seed in range(seeds)
        ]
    )


def test_table1_one_row_per_patch_size_with_seed_statistics():
    table = frames.table1(table1_trials(seeds=2))
    assert list(table["patch_size"]) == [2, 4, 8, 16]
    row = table.iloc[0]
    assert row[schema.METRIC_NUM_PARAMS] == 2000 and row["seeds"] == 2
    assert row["train_epoch_time_s_mean"] == pytest.approx(5.5)
    assert row["train_epoch_time_s_std"] == pytest.approx(math.sqrt(0.5))


def test_table1_with_one_seed_has_no_spread():
    table = frames.table1(table1_trials(seeds=1))
    assert table["test_acc_std"].isna().all()
    assert table.loc[0, "inference_time_s_mean"] == 0.05


def test_table1_markdown_shows_units_and_mean_plus_minus_std():
    text = tables.render(frames.table1(table1_trials(seeds=2)), tables.TABLE1_COLUMNS, "markdown")
    header, rule, first, *rest = text.splitlines()
    assert "(ms, valid split)" in header and "(s / epoch)" in header and "(%)" in header
    assert rule.count("---") == len(tables.TABLE1_COLUMNS) and len(rest) == 3
    # patch 2: inference 0.05 and 0.06 s, accuracy 0.78 and 0.80
    assert first == "| 2 | 2,000 | 55.0 ± 7.1 | 5.50 ± 0.71 | 79.00 ± 1.41 | 2 |"


@pytest.mark.parametrize("interval", tables.INTERVALS)
def test_table1_csv_parses_back_to_the_same_numbers(interval):
    table = frames.table1(table1_trials(seeds=2))
    text = tables.render(table, tables.TABLE1_COLUMNS, "csv", interval)
    parsed = pd.read_csv(io.StringIO(text))
    shown = tables.csv_columns(tables.TABLE1_COLUMNS, interval)
    assert ("test_acc_ci_low" in shown) == (interval == "ci")
    pd.testing.assert_frame_equal(parsed, table[shown], check_dtype=False)


def test_table1_can_show_the_95_percent_interval_and_says_so():
    text = tables.render(
        frames.table1(table1_trials(seeds=2)), tables.TABLE1_COLUMNS, "markdown", "ci"
    )
    header, _, first, *_ = text.splitlines()
    assert "Test accuracy (%, mean [95 % CI])" in header and "Seeds" in header
    # patch 2, accuracy 0.78 and 0.80: 79 ± t(0.975, 1) × 1 = 79 ± 12.71 points.
    assert "| 79.00 [66.29, 91.71] | 2 |" in first


def test_latex_escapes_specials_and_typesets_plus_minus():
    shown = pd.DataFrame({"Acc (%)": ["1.0 ± 0.1"], "a_b": ["x&y"]})
    text = tables.latex(shown)
    assert r"Acc (\%) & a\_b \\" in text and r"1.0 $\pm$ 0.1 & x\&y \\" in text
    assert text.startswith(r"\begin{tabular}{rr}") and r"\bottomrule" in text


def test_markdown_escapes_pipes():
    assert r"a\|b" in tables.markdown(pd.DataFrame({"h": ["a|b"]}))


def test_best_trial_prefers_the_sweeps_choice_then_validation_accuracy():
    trials = make_trials([{"metrics": {schema.METRIC_BEST_VALID_ACC: v}} for v in (0.5, 0.9, 0.7)])
    assert frames.best_trial(trials, "r2")["run_id"] == "r2"
    assert frames.best_trial(trials, None)["run_id"] == "r1"
    assert frames.best_trial(trials, "not-a-trial")["run_id"] == "r1"


def test_best_settings_choose_on_validation_and_report_test_accuracy():
    rows = [
        {
            "model": "mlp",
            "activation": "relu",
            "metrics": {schema.METRIC_BEST_VALID_ACC: 0.6, schema.METRIC_TEST_ACC: 0.5},
        },
        {
            "model": "mlp",
            "activation": "tanh",
            "metrics": {schema.METRIC_BEST_VALID_ACC: 0.5, schema.METRIC_TEST_ACC: 0.9},
        },
        {
            "model": "resnet18",
            "activation": "relu",
            "metrics": {schema.METRIC_BEST_VALID_ACC: 0.8, schema.METRIC_TEST_ACC: 0.7},
        },
    ]
    trials = frames.with_settings(make_trials(rows), ["activation"]).assign(study="s")
    best = frames.best_settings(trials)
    assert list(best["model"]) == ["mlp", "resnet18"]
    assert best.loc[0, "setting"] == "activation = relu"
    assert best.loc[0, "test_acc_mean"] == 0.5 and best.loc[0, "run_ids"] == ["r0"]


def test_configuration_leaves_out_bookkeeping_and_unused_options():
    trial = make_trials(
        [{"model": "mlp", "lr": "0.1", "seed": "3", "device": "cpu", "patch_size": "4"}]
    )
    trial = trial.assign(**{f"tags.{schema.TAG_UNUSED_PARAMS}": "patch_size, momentum"}).iloc[0]
    assert frames.configuration(trial) == {"model": "mlp", "lr": "0.1"}


def make_curves(settings: dict[str, int], epochs: int = 4) -> pd.DataFrame:
    """`frames.curves` output for settings → number of seeds."""
    rows = [
        (setting, metric, step, 0.5, 0.4 if seeds > 1 else 0.5, 0.6 if seeds > 1 else 0.5, seeds)
        for setting, seeds in settings.items()
        for metric in CURVE_METRICS
        for step in range(1, epochs + 1)
    ]
    curves = pd.DataFrame(
        rows, columns=["setting", "metric", "step", "mean", "min", "max", "seeds"]
    )
    return curves.assign(setting=pd.Categorical(curves["setting"], categories=list(settings)))


def test_curves_figure_draws_one_line_per_setting_on_each_of_four_panels():
    figure = curves_figure(make_curves({"lr = 0.1": 1, "lr = 0.01": 1, "lr = 0.001": 1}), "t")
    axes = figure.get_axes()
    assert len(axes) == 4
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == [
            "lr = 0.1",
            "lr = 0.01",
            "lr = 0.001",
        ]
        assert not ax.collections  # one seed each: no band
    # The same setting has the same colour on every panel.
    assert len({ax.get_lines()[1].get_color() for ax in axes}) == 1
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_curves_figure_bands_several_seeds_and_says_so_in_the_legend():
    figure = curves_figure(make_curves({"a": 2, "b": 2}), "t")
    for ax in figure.get_axes():
        assert len(ax.collections) == 2
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "line: mean, band: min-max over 2 seeds" in legend_texts


def test_curves_give_the_95_percent_interval_of_the_mean_per_epoch():
    trials = frames.with_settings(make_trials([{"lr": "0.1"}, {"lr": "0.1"}]), ["lr"])
    history = make_history(["r0", "r1"], 2, lambda run, _, step: step + (run == "r1"))
    row = frames.curves(history, trials).iloc[0]
    # Values s and s + 1: mean s + 0.5, standard error 0.5, t(0.975, 1) = 12.706.
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (row["mean"] - 6.3531, row["mean"] + 6.3531), abs=1e-3
    )


def test_curves_figure_can_band_the_interval_and_says_so():
    curves = make_curves({"a": 2}).assign(ci_low=0.1, ci_high=0.9)
    figure = curves_figure(curves, "t", interval="ci")
    band = figure.get_axes()[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.1) and band.max() == pytest.approx(0.9)
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "line: mean, band: 95 % CI of the mean over 2 seeds" in legend_texts
