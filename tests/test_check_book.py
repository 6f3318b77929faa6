"""Tests of scripts/check_book.py on a tiny fake ``_build/html`` tree (no book build)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_book.py"
_spec = importlib.util.spec_from_file_location("check_book", _SCRIPT)
check_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_book)

TOC = """\
format: jb-book
root: book/intro
parts:
  - caption: The method
    chapters:
      - file: book/method
  - caption: Walkthrough notebooks
    chapters:
      - file: book/notebooks
      - file: notebooks/01_embedding_decomposition
        sections:
          - file: notebooks/02_untangled_attention.ipynb
  - caption: Back matter
    chapters:
      - file: book/references
"""

MATHJAX = '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
LOGO = '<nav><img src="../_static/logo.png" alt="logo"></nav>'


def page(body: str, *, mathjax: bool = True, logo: bool = False) -> str:
    head = f"<head>{MATHJAX if mathjax else ''}</head>"
    return (f"<html>{head}<body>{LOGO if logo else ''}"
            f'<article class="bd-article">{body}</article></body></html>')


GOOD_NOTEBOOK = page('<p>Eq. <span class="math notranslate nohighlight">\\(x_P\\)</span></p>'
                     '<img alt="fig" src="../_images/fig.png" />')


def make_book(tmp_path: Path, pages: dict[str, str], images: tuple[str, ...] = ("fig.png",)) -> Path:
    (tmp_path / "_toc.yml").write_text(TOC)
    html = tmp_path / "_build" / "html"
    for name, text in pages.items():
        path = html / f"{name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (html / "_images").mkdir(parents=True, exist_ok=True)
    for image in images:
        (html / "_images" / image).write_bytes(b"\x89PNG")
    return html


def all_pages(**overrides: str) -> dict[str, str]:
    pages = {
        "book/intro": page("<p>intro</p>", mathjax=False),
        "book/method": page("<p>method</p>"),
        "book/notebooks": page("<p>how to run</p>", mathjax=False),
        "notebooks/01_embedding_decomposition": GOOD_NOTEBOOK,
        "notebooks/02_untangled_attention": GOOD_NOTEBOOK,
        "book/references": page("<p>refs</p>", mathjax=False),
    }
    pages.update(overrides)
    return {k: v for k, v in pages.items() if v is not None}


def test_toc_entries_in_order_without_suffix(tmp_path):
    import yaml

    entries = check_book.toc_entries(yaml.safe_load(TOC), tmp_path)
    assert entries == ["book/intro", "book/method", "book/notebooks",
                       "notebooks/01_embedding_decomposition",
                       "notebooks/02_untangled_attention", "book/references"]
    assert [check_book.is_notebook_page(e) for e in entries] == [
        False, False, False, True, True, False]


def test_toc_glob_entries_are_expanded(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("02_b.ipynb", "01_a.ipynb", "notes.txt"):
        (tmp_path / "notebooks" / name).write_text("{}")
    toc = {"root": "book/intro", "chapters": [{"glob": "notebooks/*"}]}
    assert check_book.toc_entries(toc, tmp_path) == ["book/intro", "notebooks/01_a",
                                                     "notebooks/02_b"]


def test_good_book_passes(tmp_path):
    html = make_book(tmp_path, all_pages())
    assert check_book.check_book(tmp_path, html) == []
    assert check_book.main(["--root", str(tmp_path)]) == 0


def test_missing_page_is_reported(tmp_path):
    html = make_book(tmp_path, all_pages(**{"book/method": None}))
    problems = check_book.check_book(tmp_path, html)
    assert len(problems) == 1 and problems[0].startswith("book/method: not built")


def test_notebook_without_figure_is_reported(tmp_path):
    no_fig = page('<p><span class="math notranslate nohighlight">\\(a\\)</span></p>', logo=True)
    html = make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": no_fig}))
    problems = check_book.check_book(tmp_path, html)
    # The navigation-bar logo is outside the article and does not count as a figure.
    assert problems == ["notebooks/02_untangled_attention: notebook page has no figure "
                        "(no <img> in the article); were its outputs saved?"]


def test_notebook_without_math_is_reported(tmp_path):
    no_math = page('<p>$x$ as plain text</p><img src="../_images/fig.png">')
    html = make_book(tmp_path, all_pages(**{"notebooks/01_embedding_decomposition": no_math}))
    problems = check_book.check_book(tmp_path, html)
    assert len(problems) == 1
    assert "notebooks/01_embedding_decomposition: notebook page has no rendered math" in problems[0]


@pytest.mark.parametrize("math", ['<div class="math notranslate nohighlight">\\[a\\]</div>',
                                  "<p>\\(a\\)</p>", "<p>\\[a\\]</p>"])
def test_each_math_marker_counts(math):
    assert check_book.has_math(page(math))


def test_math_without_mathjax_is_reported(tmp_path):
    no_js = page('<span class="math">\\(a\\)</span><img src="../_images/fig.png">', mathjax=False)
    html = make_book(tmp_path, all_pages(**{"notebooks/01_embedding_decomposition": no_js}))
    assert check_book.check_book(tmp_path, html) == [
        "notebooks/01_embedding_decomposition: notebook page has math but does not load MathJax"]


def test_broken_image_is_reported_and_remote_images_are_skipped(tmp_path):
    body = ('<span class="math">\\(a\\)</span><img src="../_images/gone.png">'
            '<img src="https://example.org/x.png"><img src="data:image/png;base64,AAAA">')
    html = make_book(tmp_path, all_pages(**{"notebooks/01_embedding_decomposition": page(body)}))
    assert check_book.check_book(tmp_path, html) == [
        "notebooks/01_embedding_decomposition: image _images/gone.png is missing from the build"]


def test_main_lists_problems_and_exits_nonzero(tmp_path, capsys):
    make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": page("<p>empty</p>")}))
    assert check_book.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "no figure" in err and "no rendered math" in err


def test_main_without_build_exits_2(tmp_path, capsys):
    (tmp_path / "_toc.yml").write_text(TOC)
    assert check_book.main(["--root", str(tmp_path)]) == 2
    assert "run `jupyter-book build . -W` first" in capsys.readouterr().err
