"""Links and paths in the documentation and in the files under k8s/ lead somewhere real."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from tests.deploy.support import ROOT

DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def _citing_files() -> list[Path]:
    """The files besides the documents that cite them: manifests, compose, the Dockerfile,
    the Makefile, k6 scenarios, scripts. Python files only under k8s/ (elsewhere their
    docstrings and comments are reviewed with the code)."""
    names = (
        "compose.yaml",
        "Dockerfile",
        "Makefile",
        ".env.example",
        ".dockerignore",
        ".gitignore",
    )
    files = [ROOT / name for name in names]
    for folder in ("k8s", "k6", "bench", "scripts", ".ci"):
        files += (ROOT / folder).rglob("*")
    return sorted(
        p
        for p in files
        if p.is_file()
        and p.suffix not in {".png", ".pyc"}
        and "__pycache__" not in p.parts
        and (p.suffix != ".py" or p.is_relative_to(ROOT / "k8s"))
    )


CITING_FILES = _citing_files()

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A file named from the repository's root: `docs/...` anywhere, `README.md`, each with an
# optional `#anchor`. Placeholders such as `docs/runbook.md#<alert>` keep the path only.
# `DESIGN.md` (the starting contract, which is not in the repository) is caught too: the
# design of record is docs/design.md.
_ROOTED = re.compile(r"(?<![\w/.-])(README\.md|DESIGN\.md|docs/[\w./-]*\w)(?:#([\w-]+))?")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file's headings, code blocks left out."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(text):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(anchors)


def _problem(target: Path, anchor: str | None, mention: str) -> str | None:
    """What is wrong with a mention of `target#anchor`, or None."""
    if not target.exists():
        return f"{mention}: no such file"
    if anchor and target.suffix == ".md" and anchor.lower() not in _anchors(target):
        return f"{mention}: no heading with that anchor"
    return None


def _rooted_problems(text: str) -> list[str]:
    problems = [
        _problem(ROOT / path, anchor, f"{path}#{anchor}" if anchor else path)
        for path, anchor in _ROOTED.findall(text)
    ]
    return [p for p in problems if p]


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("document", DOCUMENTS, ids=_relative)
def test_document_links_and_paths_lead_somewhere(document: Path) -> None:
    """Each relative link of a README or docs/ page reaches a file, and a heading when it
    names an anchor; each `docs/...` path it mentions exists."""
    text = document.read_text(encoding="utf-8")
    problems: list[str | None] = [*_rooted_problems(text)]
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path) if path else document
        problems.append(_problem(resolved, anchor or None, target))
    assert not [p for p in problems if p]


@pytest.mark.parametrize("path", CITING_FILES, ids=_relative)
def test_other_files_name_documents_that_exist(path: Path) -> None:
    """Every `docs/...` or `README.md#anchor` that a manifest, compose, a script or a k6
    scenario names (in comments, and in runbook_url values) is a file, and a heading of
    it; none names `DESIGN.md`."""
    assert not _rooted_problems(path.read_text(encoding="utf-8"))


def test_the_checks_see_the_mentions() -> None:
    """The patterns find the mentions these tests rely on, so an empty result means clean."""
    assert ("docs/runbook.md", "usercountersynclaghigh") in _ROOTED.findall(
        (ROOT / "k8s" / "monitoring" / "prometheusrule.yaml").read_text(encoding="utf-8")
    )
    assert "rotate-a-secret" in _anchors(ROOT / "docs" / "deploy.md")
    assert "on-a-laptop-docker-compose" in _anchors(ROOT / "docs" / "deploy.md")
    assert _rooted_problems("see docs/missing.md") == ["docs/missing.md: no such file"]
    assert _rooted_problems("DESIGN.md invariant 7") == ["DESIGN.md: no such file"]
    assert _rooted_problems("docs/design.md, invariant 7") == []
    assert ("docs/design.md", "") in _ROOTED.findall(
        (ROOT / "k8s" / "base" / "redis.conf").read_text(encoding="utf-8")
    )
    assert ROOT / "compose.yaml" in CITING_FILES
    assert ROOT / "docs" / "design.md" in DOCUMENTS
    assert _rooted_problems("README.md#no-such-part") == [
        "README.md#no-such-part: no heading with that anchor"
    ]
