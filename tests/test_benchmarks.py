"""The throughput benchmark runs end to end and prints its table of numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT = REPO / "benchmarks" / "throughput.py"
# model, phase, images, project img/s, reference img/s, ratio, GFLOP/s, peak % (on the CPU
# too, against a GEMM measured in the same run), then data % and warm-up seconds, which may be
# "-".
ROW = re.compile(
    r"^(?P<model>mlp|resnet18|mlpmixer)\s+(?P<phase>train|infer)\s+(?P<images>\d+)\s+"
    r"(?P<project>[\d.]+)\s+(?P<reference>[\d.]+)\s+(?P<ratio>[\d.]+)\s+(?P<gflops>[\d.]+)\s+"
    r"(?P<peak>[\d.]+)\s"
)


@pytest.mark.e2e
def test_quick_throughput_prints_numbers_for_both_loops(tmp_path: Path) -> None:
    # The MLP alone keeps this well under a minute on a 2-core CPU; the documented --quick
    # command covers all three models.
    command = [sys.executable, str(THROUGHPUT), "--quick", "--models", "mlp", "--repeats", "2"]
    result = subprocess.run(
        [*command, "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = [match.groupdict() for line in result.stdout.splitlines() if (match := ROW.match(line))]
    assert [(row["model"], row["phase"]) for row in rows] == [("mlp", "train"), ("mlp", "infer")]
    for row in rows:
        assert int(row["images"]) > 0
        project, reference = float(row["project"]), float(row["reference"])
        assert project > 0 and reference > 0 and float(row["gflops"]) > 0
        assert float(row["peak"]) > 0
        assert float(row["ratio"]) == pytest.approx(project / reference, abs=0.01, rel=0.01)
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working folder


def test_throughput_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, str(THROUGHPUT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--models", "--repeats", "--compile", "--precision"):
        assert option in result.stdout
