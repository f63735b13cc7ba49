"""The documentation's links: every relative link in README.md and docs/*.md names a file that
exists, and every #anchor a heading of that file (GitHub's rule: lower case, punctuation
dropped, spaces to hyphens)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(path):
    """The anchors of a markdown file's headings (outside code fences)."""
    out, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(path):
    """(target, anchor) of every relative markdown link and image outside code fences."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            file, _, anchor = target.partition("#")
            yield file, anchor


def test_every_relative_link_and_anchor_exists():
    bad = []
    for doc in DOCS:
        for file, anchor in links(doc):
            target = (doc.parent / file).resolve() if file else doc
            if not target.exists():
                bad.append(f"{doc.name}: {file} does not exist")
            elif anchor and anchor not in anchors(target):
                bad.append(f"{doc.name}: no heading #{anchor} in {target.name}")
    assert not bad, bad


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_code_points_at_the_reference_in_docs():
    """The record contract and the reference moved from README.md to docs/: modules that cite
    them name the docs/ file."""
    stale = [str(p.relative_to(ROOT)) for folder in ("packet_flow", "benchmarks")
             for p in sorted((ROOT / folder).rglob("*.py")) if "README" in p.read_text()]
    assert not stale, f"{stale} cite README.md; the reference is in docs/ (options.md, ...)"


def test_the_readme_lists_every_docs_file():
    listed = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Documentation\n")[1]
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if f"](docs/{p.name})" not in listed]
    assert not missing, f"add {missing} to the README's Documentation list"
