"""The README is a front page whose every relative link and anchor resolves, and the error hints that point at
the troubleshooting page name sections that exist. (The docs site's own links and anchors are checked by
`mkdocs build --strict`, which tests/run.sh runs.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)
EXPLICIT = re.compile(r"\{#([\w-]+)\}")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    found = set(EXPLICIT.findall(text))
    for heading in HEADING.findall(text):
        found.add(slug(EXPLICIT.sub("", heading).strip()))
    return found


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    assert "bash scripts/quickstart.sh" in lines and "bash tests/run.sh" in lines
    assert relative_links(ROOT / "README.md"), "the README links to the docs"


@pytest.mark.parametrize("target", relative_links(ROOT / "README.md"))
def test_every_readme_link_resolves(target):
    file, _, anchor = target.partition("#")
    path = (ROOT / file) if file else ROOT / "README.md"
    assert path.exists(), f"README links to {file}, which does not exist"
    if anchor:
        assert anchor in anchors(path), f"README links to #{anchor}, which {path.name} does not have"


def test_the_link_checker_can_fail(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n## Set-up, step 2 {#setup}\n[x](missing.md) [y](#a-title) [z](#nowhere)\n")
    assert relative_links(page) == ["missing.md", "#a-title", "#nowhere"]
    assert anchors(page) == {"a-title", "setup", "set-up-step-2"}


def test_hints_that_point_at_the_docs_name_sections_that_exist():
    page = ROOT / "docs" / "troubleshooting.md"
    hinted = set()
    for source in (ROOT / "mlcluster").rglob("*.py"):
        hinted |= set(re.findall(r'see_docs\(\s*["\']([\w-]+)["\']', source.read_text()))
    assert {"model-stack", "no-docker-engine", "aws-not-allowed"} <= hinted
    assert hinted <= anchors(page), f"no section for {sorted(hinted - anchors(page))} in {page}"
