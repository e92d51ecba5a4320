"""The README is a front page: small, linking to docs/ pages that exist; links and anchors hold.

Every relative link of the README and of docs/*.md must name a file of the repository, and a
`#anchor` a heading of the page it points to (GitHub's anchors); the documentation cites no
document outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cifar_mlflow import schema

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_BYTES = 15 * 1024
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchor of each heading of `page` (code blocks aside)."""
    found, fence = set(), False
    for line in page.read_text().splitlines():
        fence ^= line.startswith("```")
        if not fence and (heading := re.match(r"^#{1,6} (.+)$", line)):
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [link for link in LINK.findall(text) if not re.match(r"^[a-z]+:", link)]


def test_the_readme_is_a_front_page_of_at_most_15_kb() -> None:
    assert len(README.read_bytes()) <= MAX_README_BYTES
    linked = {link.split("#")[0] for link in local_links(README)}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= linked, "a docs page the README hides"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_link_names_a_file_and_a_heading_that_exist(page: Path) -> None:
    for link in local_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{link}: no such file"
        if anchor:
            assert anchor in anchors(target), f"{link}: no such heading"


def test_no_document_outside_the_repository_is_cited() -> None:
    found = subprocess.run(
        ["git", "grep", "-n", "-E", r"SPEC §|SPEC\.md|/work/shared", "--", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert found.strip().splitlines() == [
        line for line in found.splitlines() if "test_docs" in line
    ]


def test_the_front_pages_study_table_lists_every_builtin_study() -> None:
    text = README.read_text()
    table = text.split("<!-- studies:start -->")[1].split("<!-- studies:end -->")[0]
    assert tuple(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)) == (
        schema.builtin_studies()
    )
