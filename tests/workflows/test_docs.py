"""The documentation holds together: every relative link and image resolves, the README stays a landing page.

Checked files: ``README.md``, ``docs/*.md``, ``web/docs/*.md`` (the node help pages) and ``workflows/README.md``.
A relative link or image (markdown ``[text](target)``, ``![alt](target)``, reference definitions, HTML
``src``/``href``) must name an existing file inside the repository, and its ``#anchor``, if any, a heading of
the target as GitHub slugs it. Links with a scheme (``https:``, ``mailto:``) are not followed: no network.
Code (fenced blocks and inline spans) is not read as links.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "README.md").is_file() and (p / "docs").is_dir())
README = REPO / "README.md"
README_MAX_LINES = 330


def _doc_files() -> list[Path]:
    files = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "web" / "docs").glob("*.md"))]
    workflows_readme = REPO / "workflows" / "README.md"
    if workflows_readme.is_file():
        files.append(workflows_readme)
    return files


def _rel(path: Path, root: Path = REPO) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _without_fences(text: str) -> str:
    """The text without fenced code blocks (their lines kept, blank)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans: what may hold links."""
    prose = _without_fences(text)
    # inline code may wrap onto the next line, never past a blank one
    return re.sub(r"(`+)(?:(?!\n\s*\n).)+?\1", lambda m: "\n" * m.group(0).count("\n"), prose, flags=re.S)


_MD_TARGET = re.compile(r"\]\(\s*(?:<([^>\n]*)>|([^)\s]*))(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_TARGET = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _targets(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    found = [m.group(1) if m.group(1) is not None else m.group(2) for m in _MD_TARGET.finditer(prose)]
    found += [m.group(1) for pattern in (_REF_TARGET, _HTML_TARGET) for m in pattern.finditer(prose)]
    return [t for t in found if not _SCHEME.match(t)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # images: their alt text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())  # \w keeps letters, digits and '_', as GitHub does
    return text.replace(" ", "-")


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
_HTML_ANCHOR = re.compile(r"<a\b[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)


def anchors(path: Path) -> set[str]:
    text = _without_fences(path.read_text(encoding="utf-8"))  # a heading's inline code is part of its anchor
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(text):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(m.group(1) for m in _HTML_ANCHOR.finditer(_prose(text)))
    return found


def _resolve(source: Path, target: str, root: Path = REPO) -> tuple[Path, str]:
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        resolved = source
    elif path_part.startswith("/"):  # GitHub reads it from the repository's root
        resolved = root / path_part.lstrip("/")
    else:
        resolved = source.parent / path_part
    return resolved.resolve(), unquote(anchor)


def _broken_links(source: Path, root: Path = REPO) -> list[str]:
    problems = []
    for target in _targets(source):
        resolved, anchor = _resolve(source, target, root)
        where = _rel(source, root)
        if not resolved.is_relative_to(root):
            problems.append(f"{where}: '{target}' leads out of the repository")
        elif not resolved.exists():
            problems.append(f"{where}: '{target}' names no file ({_rel(resolved, root)})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: '{target}': {_rel(resolved, root)} has no heading '#{anchor}'")
    return problems


def test_the_slug_rule():
    assert github_slug("The main job: `bash run.sh`") == "the-main-job-bash-runsh"
    assert github_slug("Cross- and self-attention") == "cross--and-self-attention"
    assert github_slug("SD2.x checkpoints, v-prediction (768 px)") == "sd2x-checkpoints-v-prediction-768-px"
    assert github_slug("Many GPUs, many machines: `--server`") == "many-gpus-many-machines---server"
    assert github_slug("FPE VAE Encode (Mean)") == "fpe-vae-encode-mean"


def test_the_link_reader_skips_code_and_external_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](a.md) ![b](img/b.png) [c](https://example.org/c.md) `[d](d.md)`\n"
        "```\n[e](e.md)\n```\n<img src=\"f.jpg\" width=\"9\"> [g](g.md#h \"title\")\n[r]: ref.md\n"
        "text `wrapped\n[i](i.md)` [j](<j k.md>)\n",
        encoding="utf-8",
    )
    assert _targets(page) == ["a.md", "img/b.png", "g.md#h", "j k.md", "ref.md", "f.jpg"]


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Step `one`\n\n## Step `one`\n", encoding="utf-8")
    assert anchors(tmp_path / "docs" / "guide.md") == {"guide", "step-one", "step-one-1"}
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/guide.md#step-one-1) [ok](/docs/guide.md) [ok](#top)\n# Top\n"
        "[gone](docs/gone.md) [anchor](docs/guide.md#step-two) [out](../x.md)\n",
        encoding="utf-8",
    )
    assert _broken_links(page, tmp_path) == [
        "README.md: 'docs/gone.md' names no file (docs/gone.md)",
        "README.md: 'docs/guide.md#step-two': docs/guide.md has no heading '#step-two'",
        "README.md: '../x.md' leads out of the repository",
    ]


@pytest.mark.parametrize("doc", _doc_files(), ids=_rel)
def test_every_relative_link_and_image_resolves(doc):
    problems = _broken_links(doc)
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_landing_page():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail into a guide in docs/"
    )


def test_every_guide_is_linked_from_the_readme():
    linked = {_resolve(README, target)[0] for target in _targets(README)}
    unlinked = [_rel(guide) for guide in sorted((REPO / "docs").glob("*.md")) if guide.resolve() not in linked]
    assert not unlinked, f"guides the README does not link (add them to its guide list): {unlinked}"


def test_guides_name_no_path_outside_the_project():
    machine = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp|Users)/")
    hits = [
        f"{_rel(doc)}:{n}: {line.strip()}"
        for doc in _doc_files()
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if machine.search(line)
    ]
    assert not hits, "user-facing docs name a machine's path:\n" + "\n".join(hits)
