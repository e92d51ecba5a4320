"""Pure: a comparison frame (`analysis.comparisons`) → conclusions as sentences, and the source
report's own claims checked against it, each held or not shown, with the reason.

A difference is a conclusion only when its Holm-corrected p-value is under 5 %; otherwise the
two settings "cannot be told apart", and with one seed nothing is tested at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.comparisons import SPEED_METRIC
from analysis.frames import parse_param
from cifar_mlflow.evidence import MIN_SEEDS

HELD = "held"
NOT_SHOWN = "not shown"


@dataclass(frozen=True)
class Claim:
    """A conclusion of the source report that names one setting of a study."""

    study: str
    text: str
    setting: str  # the label `frames.with_settings` gives the setting it names
    # A trade-off: as accurate as the best (cannot be told apart) and, of those, the one with
    # the shortest training pass; otherwise the claim is that the setting beats every other.
    trade_off: bool = False


CLAIMS = (
    Claim("activation", "ReLU trains best", "activation = relu"),
    Claim("lr", "lr 1e-3 wins", "lr = 0.001"),
    Claim(
        "patch",
        "patch 4 is the best trade-off (as accurate as the best, and the fastest of those)",
        "patch_size = 4",
        trade_off=True,
    ),
)


def short(setting: str) -> str:
    """ "activation = relu" → "relu", "lr = 0.001" → "lr 0.001": how a sentence names it."""
    parts = []
    for part in setting.split(", "):
        name, _, value = part.partition(" = ")
        parts.append(value if value and isinstance(parse_param(value), str) else f"{name} {value}")
    return ", ".join(parts).strip()


def points(fraction: float) -> str:
    return f"{fraction * 100:.1f}"


def _seeds(row: pd.Series, best: pd.Series) -> str:
    a, b = int(best["seeds"]), int(row["seeds"])
    return f"{a} seeds each" if a == b else f"{a} and {b} seeds"


def _interval(row: pd.Series) -> str:
    low, high = points(row["low"]), points(row["high"])
    return f"95 % CI {low} to {high}, Holm-corrected p = {row['p_holm']:.2g}"


def comparison_sentence(row: pd.Series, best: pd.Series) -> str:
    """One setting against the best one on validation accuracy, as a sentence."""
    leader, other = short(str(best["setting"])), short(str(row["setting"]))
    lead = points(row["difference"])
    if row["note"]:
        return f"{leader} leads {other} by {lead} points; {row['note']}."
    evidence = f"{_interval(row)}, {_seeds(row, best)}"
    if row["significant"]:
        return f"{leader} beats {other} by {lead} points ({evidence})."
    signed = f"{row['difference'] * 100:+.1f}"
    return f"{leader} and {other} cannot be told apart ({signed} points, {evidence})."


def _headline(best: pd.Series) -> str:
    mean = f"{points(best['best_valid_acc_mean'])} %"
    seeds = int(best["seeds"])
    if seeds < MIN_SEEDS:
        spread = f"{seeds} seed"
    else:
        low, high = points(best["best_valid_acc_ci_low"]), points(best["best_valid_acc_ci_high"])
        spread = f"95 % CI {low} to {high}, {seeds} seeds"
    test = f"{points(best['test_acc_mean'])} %" if "test_acc_mean" in best else "not logged"
    return (
        f"Best on validation accuracy: {short(str(best['setting']))}, {mean} ({spread}); "
        f"its test accuracy {test} (reported, not used to choose)."
    )


def conclusions(table: pd.DataFrame) -> list[str]:
    """The study's conclusions: the best setting, then each other setting against it."""
    best = table[table["setting"] == table["best"]].iloc[0]
    others = table[table["setting"] != table["best"]]
    lines = [_headline(best)]
    if others.empty:
        return [*lines, "One setting only: nothing to compare it with."]
    lines += [comparison_sentence(row, best) for _, row in others.iterrows()]
    if (others["note"] != "").all():
        fewest = int(table["seeds"].min())
        lines.append(
            f"With {fewest} seed{'s' if fewest != 1 else ''} per setting this study cannot "
            "conclude which setting is best, nor by how much: run it with seeds >= 2 "
            "(e.g. -P seeds=3)."
        )
    return lines


def _verdict_best(claim: Claim, table: pd.DataFrame) -> tuple[str, str]:
    rows = table.set_index("setting")
    best = str(table["best"].iloc[0])
    others = table[table["setting"] != best]
    if claim.setting != best:
        row = rows.loc[claim.setting]
        if row["note"]:
            return NOT_SHOWN, f"{short(best)} scored higher; {row['note']}"
        if row["significant"]:
            return NOT_SHOWN, f"{short(best)} beats it by {points(row['difference'])} points"
        return NOT_SHOWN, f"{short(best)} scored higher, and they cannot be told apart"
    if (others["note"] != "").any():
        return NOT_SHOWN, f"it scored highest; {others['note'].iloc[0]}"
    tied = others[~others["significant"]]
    if not tied.empty:
        names = ", ".join(short(s) for s in tied["setting"])
        return NOT_SHOWN, f"it scored highest but cannot be told apart from {names}"
    return HELD, f"it beats every other setting (largest Holm p = {others['p_holm'].max():.2g})"


def _verdict_trade_off(claim: Claim, table: pd.DataFrame) -> tuple[str, str]:
    rows = table.set_index("setting")
    best = str(table["best"].iloc[0])
    row = rows.loc[claim.setting]
    if (table["note"] != "").any():
        return NOT_SHOWN, str(table.loc[table["note"] != "", "note"].iloc[0])
    if row["significant"]:
        return NOT_SHOWN, f"{short(best)} beats it by {points(row['difference'])} points"
    as_good = table[~table["significant"].astype(bool) | (table["setting"] == best)]
    speed = f"{SPEED_METRIC}_mean"
    fastest = str(as_good.loc[as_good[speed].idxmin(), "setting"])
    if fastest != claim.setting:
        return NOT_SHOWN, f"{short(fastest)} is as accurate and trains faster"
    return HELD, "as accurate as the best, and the fastest of those"


def check_claims(study: str, table: pd.DataFrame | None) -> list[tuple[Claim, str, str]]:
    """The source's claims about `study`: (claim, held / not shown, why)."""
    found = []
    for claim in (c for c in CLAIMS if c.study == study):
        if table is None or claim.setting not in set(table["setting"]):
            found.append((claim, NOT_SHOWN, f"{short(claim.setting)} was not run"))
            continue
        verdict = _verdict_trade_off if claim.trade_off else _verdict_best
        found.append((claim, *verdict(claim, table)))
    return found
