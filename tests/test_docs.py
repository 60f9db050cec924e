"""The README and docs/ hold up in a fresh clone: links resolve, the sample output matches the demo,
and CI runs the README's own test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apten_assets.demo import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) outside code; the target stops at whitespace or the closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without code blocks or inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", _strip_fences(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def readme_commands() -> list[str]:
    """The README's two command lines: the main job, then the tests."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_clone(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        inside = file.exists() and ROOT in (file, *file.parents)
        if not inside or (anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text())):
            broken.append(target)
    # A Markdown file named in inline code is a reference too (the old README named `../shared/...`).
    for named in re.findall(r"`([\w./-]+\.md)`", _strip_fences(doc.read_text())):
        if not any(
            (base / named).resolve().is_relative_to(ROOT) and (base / named).exists()
            for base in (doc.parent, ROOT)
        ):
            broken.append(named)
    assert broken == []


def test_readme_gives_one_line_each_for_the_main_job_and_the_tests() -> None:
    assert readme_commands() == [
        "python3 uvw.py run --frozen python -m apten_assets.demo",
        "python3 uvw.py run --frozen pytest",
    ]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands == [readme_commands()[1]]


def test_readme_sample_table_has_the_demo_columns() -> None:
    readme = (ROOT / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| day |"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == SUMMARY_COLUMNS
