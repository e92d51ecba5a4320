"""Pure: numeric frames (from `analysis.frames`) → tables as Markdown, CSV, LaTeX or HTML text.

Display tables put units in their headers and show `mean ± std` where several seeds were run,
or, with `interval="ci"`, `mean [low, high]`: the 95 % Student's t interval of the mean, which
the header then names. CSV keeps the numbers as they are, mean and std (or the interval's
bounds) in separate columns, so it parses back exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from cifar_mlflow import schema

FORMATS = ("markdown", "csv", "latex")
PLUS_MINUS = "±"
# What a spread column shows: ± the standard deviation over seeds, or the 95 % interval.
INTERVALS = ("spread", "ci")
CI_HEADER = "mean [95 % CI]"


@dataclass(frozen=True)
class Column:
    """How one column of a numeric frame is shown."""

    header: str  # with the unit of the shown numbers
    source: str  # a column of the frame, or a metric with `{source}_mean`/`_std` columns
    fmt: str = ""  # format spec applied after scaling
    scale: float = 1.0  # e.g. 100 for fractions shown in %, 1000 for seconds shown in ms
    spread: bool = False  # show `{source}_mean ± {source}_std` (or its `_ci_low/_ci_high`)

    def heading(self, interval: str) -> str:
        """The header, naming the interval when the column shows one."""
        if not (self.spread and interval == "ci"):
            return self.header
        if self.header.endswith(")"):
            return f"{self.header[:-1]}, {CI_HEADER})"
        return f"{self.header} ({CI_HEADER})"


TABLE1_COLUMNS = (
    Column("Patch size", "patch_size", "d"),
    Column("Parameters", schema.METRIC_NUM_PARAMS, ",d"),
    Column(
        "Inference time (ms, valid split)", schema.METRIC_INFERENCE_TIME_S, ".1f", 1000, spread=True
    ),
    Column("Training time (s / epoch)", schema.METRIC_TRAIN_EPOCH_TIME_S, ".2f", spread=True),
    Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100, spread=True),
    Column("Seeds", "seeds", "d"),
)
SUMMARY_COLUMNS = (
    Column("Setting", "setting"),
    Column("Seeds", "seeds", "d"),
    Column("Best valid accuracy (%)", schema.METRIC_BEST_VALID_ACC, ".2f", 100, spread=True),
    Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100, spread=True),
)


def mean_std(mean: float, std: float, fmt: str, scale: float = 1.0) -> str:
    """`mean ± std`, or the mean alone when there is no spread (a single seed)."""
    shown = format(mean * scale, fmt)
    return shown if math.isnan(std) else f"{shown} {PLUS_MINUS} {format(std * scale, fmt)}"


def mean_ci(mean: float, low: float, high: float, fmt: str, scale: float = 1.0) -> str:
    """`mean [low, high]`, or the mean alone when there is no interval (a single seed)."""
    shown = format(mean * scale, fmt)
    if math.isnan(low):
        return shown
    return f"{shown} [{format(low * scale, fmt)}, {format(high * scale, fmt)}]"


def _cells(table: pd.DataFrame, column: Column, interval: str) -> list[str]:
    # Column-wise on purpose: a row of mixed dtypes (iterrows) would turn ints into floats.
    fmt, scale, source = column.fmt, column.scale, column.source
    if column.spread and interval == "ci":
        bounds = zip(table[f"{source}_ci_low"], table[f"{source}_ci_high"], strict=True)
        return [
            mean_ci(mean, low, high, fmt, scale)
            for mean, (low, high) in zip(table[f"{source}_mean"], bounds, strict=True)
        ]
    if column.spread:
        means, stds = table[f"{source}_mean"], table[f"{source}_std"]
        return [mean_std(mean, std, fmt, scale) for mean, std in zip(means, stds, strict=True)]
    return [format(value * scale if scale != 1 else value, fmt) for value in table[source]]


def display(
    table: pd.DataFrame, columns: Sequence[Column], interval: str = "spread"
) -> pd.DataFrame:
    """The frame as text cells under headers with units."""
    return pd.DataFrame(
        {column.heading(interval): _cells(table, column, interval) for column in columns}
    )


def csv_columns(columns: Sequence[Column], interval: str = "spread") -> list[str]:
    """The numeric columns behind a display: `x_mean` and `x_std` (or `x_ci_low`,
    `x_ci_high`) for a spread column."""
    spread = ("mean", "std") if interval == "spread" else ("mean", "ci_low", "ci_high")
    return [
        name
        for column in columns
        for name in (
            [f"{column.source}_{stat}" for stat in spread] if column.spread else [column.source]
        )
    ]


def markdown(shown: pd.DataFrame) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    rows = [line(list(shown.columns)), "|" + "---:|" * len(shown.columns)]
    return "\n".join(rows + [line(list(values)) for values in shown.itertuples(index=False)]) + "\n"


LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    text = text.replace("\\", r"\textbackslash{}")
    return "".join(LATEX_SPECIALS.get(c, c) for c in text).replace(PLUS_MINUS, r"$\pm$")


def latex(shown: pd.DataFrame) -> str:
    """A booktabs `tabular` (the look of `DataFrame.to_latex`), ± typeset as math."""

    def line(cells: Sequence[str]) -> str:
        return " & ".join(latex_escape(str(cell)) for cell in cells) + r" \\"

    body = [line(list(values)) for values in shown.itertuples(index=False)]
    return "\n".join(
        [
            r"\begin{tabular}{" + "r" * len(shown.columns) + "}",
            r"\toprule",
            line(list(shown.columns)),
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


def html(shown: pd.DataFrame, escape: bool = True) -> str:
    """An HTML table; `escape=False` for cells that already are HTML."""
    return shown.to_html(index=False, border=0, escape=escape)


def render(
    table: pd.DataFrame, columns: Sequence[Column], fmt: str, interval: str = "spread"
) -> str:
    """A numeric frame as text in one of `FORMATS`, spreads as ± std or 95 % intervals."""
    if fmt == "csv":
        return table[csv_columns(columns, interval)].to_csv(index=False)
    shown = display(table, columns, interval)
    return {"markdown": markdown, "latex": latex}[fmt](shown)
