"""One mapping from errors to exit statuses, and messages that fit their cause."""

from __future__ import annotations

import click
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from cifar_mlflow import console
from cifar_mlflow.errors import (
    DivergedLossError,
    NotResumableError,
    RunNotFoundError,
    TrainingError,
    UserError,
)
from cifar_mlflow.tracking.lookups import run_by_id


def _command(error: BaseException, hint: str | None = None) -> console.Command:
    def raise_it() -> None:
        raise error

    body = raise_it if hint is None else console.hint_when_interrupted(hint)(raise_it)
    return console.command(name="cmd")(body)


def run(command: click.Command, args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of `command` run as the console runs it."""
    with pytest.raises(SystemExit) as exited:
        command.main(args)
    return exited.value.code, capsys.readouterr().err.lstrip("\n")  # click's after Ctrl-C


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (RunNotFoundError("no run with id 'x'"), 2, "Error: no run with id 'x'"),
        (NotResumableError("run x already FINISHED"), 2, "Error: run x already FINISHED"),
        (UserError("plain"), 2, "Error: plain"),
        (DivergedLossError("loss diverged"), 1, "Error: loss diverged (the run is marked FAILED)"),
        (KeyboardInterrupt(), 130, "Aborted."),
    ],
)
def test_each_error_family_has_one_status_and_one_line(error, status, line, capsys) -> None:
    assert run(_command(error), [], capsys) == (status, line + "\n")


def test_a_training_error_reports_itself(capsys) -> None:
    class Several(TrainingError):
        def report(self) -> str:
            return "FAILED a: why\nSweep s: 1 of 2 trials failed: a. link"

    status, err = run(_command(Several("1 of 2")), [], capsys)
    assert status == 1
    assert err.splitlines() == ["FAILED a: why", "Sweep s: 1 of 2 trials failed: a. link"]


def test_a_hint_is_printed_only_by_a_command_that_has_one(capsys) -> None:
    hinted = run(_command(KeyboardInterrupt(), "continue it with --resume"), [], capsys)
    assert hinted == (130, "Aborted: continue it with --resume\n")
    assert run(_command(KeyboardInterrupt()), [], capsys) == (130, "Aborted.\n")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("args", "patched", "line"),
    [
        (["train"], "cifar_mlflow.tracking.client.check_tracking_server", "--resume RUN_ID"),
        (["sweep", "--study", "lr"], "cifar_mlflow.studies.load_study", "same command again"),
        (["predict", "--model", "m", "x.png"], "cifar_mlflow.prediction.image_files", None),
    ],
    ids=["train", "sweep", "predict"],
)
def test_ctrl_c_hints_at_continuing_only_for_commands_that_can(
    args, patched, line, monkeypatch, capsys
) -> None:
    from cifar_mlflow.cli import cli

    monkeypatch.setattr(patched, _interrupt)
    status, err = run(cli, args, capsys)
    assert status == 130
    if line is None:
        assert err == "Aborted.\n"  # predict has nothing to resume
    else:
        assert err.startswith("Aborted: ") and line in err


def test_click_usage_errors_are_user_errors(capsys) -> None:
    @console.command(name="cmd")
    @click.option("--n", type=int)
    def cmd(n: int) -> None:
        pass

    status, err = run(cmd, ["--n", "x"], capsys)
    assert status == 2 and err.startswith("Error: ")


class _RefusingClient:
    tracking_uri = "sqlite:///store.db"

    def __init__(self, code: int) -> None:
        self.code = code

    def get_run(self, run_id: str):
        raise MlflowException(f"refused {run_id}", error_code=self.code)


def test_only_a_missing_run_is_no_run_other_server_errors_stay_themselves() -> None:
    with pytest.raises(RunNotFoundError, match=r"no run with id 'abc' on sqlite:///store\.db"):
        run_by_id("abc", _RefusingClient(RESOURCE_DOES_NOT_EXIST))
    for code in (PERMISSION_DENIED, INTERNAL_ERROR):
        with pytest.raises(MlflowException, match="refused abc") as raised:
            run_by_id("abc", _RefusingClient(code))
        assert not isinstance(raised.value, UserError)
