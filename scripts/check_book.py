"""Check the built book, after ``jupyter-book build . -W``.

Reads ``_toc.yml`` and ``_build/html`` and checks that

* every page listed in the table of contents was built as HTML;
* every notebook page (an entry under ``notebooks/``) shows at least one figure (an ``<img>``
  in the page's article), and at least as many ``<img>`` as its ``.ipynb`` stores figure outputs
  (outputs with ``image/png``, ``image/jpeg`` or ``image/svg+xml`` data, outside cells tagged
  ``remove-output`` or ``remove-cell``), so that no saved figure is lost in the build;
* every notebook page shows rendered math (MathJax markup: ``class="math``, ``\\(`` or ``\\[``)
  and loads MathJax;
* every local image a page points to exists in the build;
* no entry of the sidebar (the navigation built from the pages' titles) holds a backslash or a
  ``$``: a title with LaTeX shows there as raw source, so titles must be plain text.

Usage::

    python scripts/check_book.py [--root .] [--html _build/html]

Exits with 0 when all is well, 1 with a list of problems, 2 when the build or the table of
contents cannot be found. Only the standard library and PyYAML (a Jupyter Book dependency) are
needed.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

#: Table-of-contents entries under this folder are notebook pages.
NOTEBOOK_DIR = "notebooks/"

#: Markers of math rendered for MathJax by Sphinx/MyST: ``<span class="math ...">\(...\)</span>``
#: and ``<div class="math ...">\[...\]</div>``.
MATH_MARKERS = ('class="math', "\\(", "\\[")

_ARTICLE = re.compile(r"<article\b.*?</article>", re.DOTALL | re.IGNORECASE)
_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_SRC = re.compile(r"""\bsrc\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_MATHJAX = re.compile(r"<script\b[^>]*mathjax", re.IGNORECASE)
_SIDEBAR = re.compile(r"<nav\b[^>]*\bbd-docs-nav\b.*?</nav>", re.DOTALL | re.IGNORECASE)
_LINK = re.compile(r"<a\b[^>]*>(.*?)</a>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")

#: MIME types of notebook outputs that the book renders as an ``<img>``.
FIGURE_MIME_TYPES = ("image/png", "image/jpeg", "image/svg+xml")

#: Cell tags with which MyST-NB does not render a cell's outputs.
HIDDEN_OUTPUT_TAGS = frozenset({"remove-output", "remove_output", "remove-cell", "remove_cell"})


def toc_entries(toc: dict, root: Path | None = None) -> list[str]:
    """All page paths of a Jupyter Book 1 ``_toc.yml`` (``root``, ``file`` and ``glob``
    entries, in order, without extension). ``glob`` entries are expanded under ``root``."""
    entries: list[str] = []

    def visit(node) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    entries.append(_strip_suffix(str(node[key])))
            if "glob" in node and root is not None:
                for path in sorted(glob.glob(str(root / node["glob"]))):
                    rel = Path(path).relative_to(root).as_posix()
                    if rel.endswith((".md", ".ipynb", ".rst")):
                        entries.append(_strip_suffix(rel))
            for key in ("parts", "chapters", "sections", "subtrees", "entries"):
                if key in node:
                    visit(node[key])

    visit(toc)
    seen: set[str] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]


def _strip_suffix(path: str) -> str:
    path = path.strip()
    if path.startswith("./"):
        path = path[2:]
    for suffix in (".ipynb", ".md", ".rst"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def is_notebook_page(entry: str) -> bool:
    """Whether a table-of-contents entry is a notebook page."""
    return entry.startswith(NOTEBOOK_DIR)


def article_of(html: str) -> str:
    """The page's main content (``<article>``) if there is one, else the whole page, so that a
    logo in the navigation bar does not count as a figure."""
    match = _ARTICLE.search(html)
    return match.group(0) if match else html


def count_images(html: str) -> int:
    """Number of ``<img>`` tags in the page's main content."""
    return len(_IMG.findall(article_of(html)))


def notebook_figures(notebook: dict) -> int:
    """Number of figure outputs stored in a notebook (read as JSON): outputs of code cells
    holding data of a ``FIGURE_MIME_TYPES`` type. An output holding several of them (a PNG and
    an SVG of the same figure) counts once, as the book shows one. Cells whose outputs the book
    removes (``HIDDEN_OUTPUT_TAGS``) are skipped."""
    count = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if HIDDEN_OUTPUT_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if any(mime in data for mime in FIGURE_MIME_TYPES):
                count += 1
    return count


def has_math(html: str) -> bool:
    body = article_of(html)
    return any(marker in body for marker in MATH_MARKERS)


def loads_mathjax(html: str) -> bool:
    return _MATHJAX.search(html) is not None


def sidebar_titles(html: str) -> list[str]:
    """The text of each link in the page's sidebar (the theme's ``bd-docs-nav``), tags removed."""
    match = _SIDEBAR.search(html)
    if not match:
        return []
    return [" ".join(_TAG.sub("", link).split()) for link in _LINK.findall(match.group(0))]


def missing_images(html: str, page: Path, html_root: Path) -> list[str]:
    """Local image sources of the page's article that do not exist in the build."""
    missing = []
    for tag in _IMG.findall(article_of(html)):
        src = _SRC.search(tag)
        if not src:
            continue
        url = urlsplit(src.group(1))
        if url.scheme or url.netloc or src.group(1).startswith("data:"):
            continue  # remote or inline image
        target = (page.parent / unquote(url.path)).resolve()
        if not target.is_file():
            try:
                shown = target.relative_to(html_root.resolve()).as_posix()
            except ValueError:
                shown = str(target)
            missing.append(shown)
    return missing


def check_book(root: Path, html_root: Path, toc_path: Path | None = None) -> list[str]:
    """Return the list of problems found (empty when the book is fine)."""
    toc_path = toc_path or root / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8")) or {}
    entries = toc_entries(toc, root)
    if not entries:
        return [f"{toc_path}: no pages found in the table of contents"]
    problems = []
    raw_titles: set[str] = set()
    for entry in entries:
        page = html_root / f"{entry}.html"
        if not page.is_file():
            problems.append(f"{entry}: not built (no {page.relative_to(html_root).as_posix()})")
            continue
        html = page.read_text(encoding="utf-8", errors="replace")
        for title in sidebar_titles(html):
            if ("\\" in title or "$" in title) and title not in raw_titles:
                raw_titles.add(title)
                problems.append(f"sidebar entry '{title}' shows raw LaTeX: give that page a "
                                "plain-text title (keep the math in its first paragraph)")
        for src in missing_images(html, page, html_root):
            problems.append(f"{entry}: image {src} is missing from the build")
        if is_notebook_page(entry):
            shown = count_images(html)
            source = root / f"{entry}.ipynb"
            stored = None
            if source.is_file():
                try:
                    stored = notebook_figures(json.loads(source.read_text(encoding="utf-8")))
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
                    problems.append(f"{entry}: cannot read {entry}.ipynb as a notebook ({err})")
            if stored is not None and shown < stored:
                problems.append(f"{entry}: notebook page shows {shown} image(s) (<img> in the "
                                f"article) but {entry}.ipynb stores {stored} figure output(s) "
                                f"({', '.join(FIGURE_MIME_TYPES)}); some figures were not rendered")
            elif shown == 0:
                problems.append(f"{entry}: notebook page has no figure (no <img> in the article); "
                                "were its outputs saved?")
            if not has_math(html):
                problems.append(f"{entry}: notebook page has no rendered math "
                                "(no class=\"math\", \\( or \\[ in the article)")
            elif not loads_mathjax(html):
                problems.append(f"{entry}: notebook page has math but does not load MathJax")
    return problems


def main(argv: list[str] | None = None) -> int:
    default_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=default_root,
                        help="folder holding _toc.yml (default: the repository root)")
    parser.add_argument("--html", type=Path, default=None,
                        help="built HTML folder (default: ROOT/_build/html)")
    args = parser.parse_args(argv)
    root = args.root
    html_root = args.html if args.html is not None else root / "_build" / "html"
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        print(f"check_book: no table of contents at {toc_path}", file=sys.stderr)
        return 2
    if not html_root.is_dir():
        print(f"check_book: no built book at {html_root}; run `jupyter-book build . -W` first",
              file=sys.stderr)
        return 2
    problems = check_book(root, html_root, toc_path)
    if problems:
        print(f"check_book: {len(problems)} problem(s) in {html_root}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    entries = toc_entries(yaml.safe_load(toc_path.read_text(encoding="utf-8")), root)
    notebooks = sum(is_notebook_page(e) for e in entries)
    print(f"check_book: ok, {len(entries)} pages built, {notebooks} notebook page(s) with "
          "all their figures and math")
    return 0


if __name__ == "__main__":
    sys.exit(main())
