"""The unprivileged account the launcher runs PostgreSQL and MLflow as.

Neither ever runs as root: started by root, the launcher creates (once) the system user
`cifar-mlflow` without a login shell or home and hands the data folder to it; started by anyone
else, both run as that user and the folder stays theirs. Either way the folder is 0700 and its
files 0600, so no other local account reads the runs, the secrets or the logs.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cifar_mlflow.errors import UserError

SERVICE_USER = "cifar-mlflow"


class ServerError(UserError):
    """A server that cannot start or stop; its message is one line."""


def write_private(path: Path, text: str) -> None:
    # Created with mode 0600, so never readable by others, not even for an instant.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    @property
    def switch(self) -> list[str]:
        """The command prefix that runs a program as this account (empty when we are it)."""
        return [] if self.uid == os.geteuid() else ["runuser", "-u", self.name, "--"]


def service_account() -> Account:
    """The account to run the server as: `cifar-mlflow` under root, else the caller."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            capture_output=True, text=True,
        )  # fmt: skip
        if created.returncode != 0:
            raise ServerError(
                f"refusing to run the server as root and could not create the system user "
                f"{SERVICE_USER}: {created.stderr.strip() or 'useradd failed'}"
            ) from None
        entry = pwd.getpwnam(SERVICE_USER)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def hand_over(data_dir: Path, account: Account) -> None:
    """Make `data_dir` the account's alone (0700), after checking the account can reach it."""
    data_dir.chmod(0o700)
    if account.uid == os.geteuid():
        return
    for root, folders, files in os.walk(data_dir):
        for name in [".", *folders, *files]:
            os.chown(Path(root, name), account.uid, account.gid, follow_symlinks=False)
    reachable = subprocess.run([*account.switch, "test", "-x", str(data_dir)])
    if reachable.returncode != 0:
        raise ServerError(
            f"the {account.name} user cannot reach {data_dir}: choose a data folder outside "
            "private directories such as /root"
        )
