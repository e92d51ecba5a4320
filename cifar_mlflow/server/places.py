"""Folders that receive secrets (data folders, certificates, backups) stay out of git work
trees, where `git add -A` or a Docker build context could pick them up."""

from __future__ import annotations

from pathlib import Path

from cifar_mlflow.server.account import ServerError


def refuse_inside_work_tree(path: Path, what: str) -> None:
    """Raise when `path`, or the folder it would be created in, lies in a git work tree."""
    path = path.resolve()
    for folder in (path, *path.parents):
        # `.git` is a folder in a clone and a file in a worktree or submodule.
        if (folder / ".git").exists():
            raise ServerError(
                f"{what} {path} is inside the git work tree {folder}, where git or a Docker "
                "build could pick up its secrets; choose a folder outside it"
            )
