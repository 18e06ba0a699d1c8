"""Every relative link in the README and docs/ points at a file or folder that exists in the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    missing = [t for t in _relative_links(md) if not (md.parent / t.split("#")[0]).exists()]
    assert not missing, f"{md.name} links to missing paths: {missing}"


def test_the_docs_have_links_to_check():
    assert sum(len(_relative_links(md)) for md in DOCS) > 20
