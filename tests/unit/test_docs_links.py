"""Every relative link in README.md and docs/*.md resolves: the file exists and, with ``#anchor``, the target
has a heading of that GitHub slug (lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slug_follows_github() -> None:
    assert slug("Rollouts and crashes") == "rollouts-and-crashes"
    assert slug("The session service (`services/session`)") == "the-session-service-servicessession"


def _resolves(path: Path, target: str) -> bool:
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return False
    return not anchor or dest.suffix != ".md" or anchor in {slug(h) for h in _HEADING.findall(dest.read_text())}


def _broken(path: Path) -> list[str]:
    return [target for target in _links(path) if not _resolves(path, target)]


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## Some section\n[ok](#some-section) [gone](b.md) [bad](a.md#nope)\n")
    assert _broken(tmp_path / "a.md") == ["b.md", "a.md#nope"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    assert _broken(path) == []
