"""Tests of scripts/check_book.py on a tiny fake ``_build/html`` tree and fake ``.ipynb``
files (no book build)."""

from __future__ import annotations

import importlib.util
import json
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


def output(*mimes: str) -> dict:
    """A display_data output holding data of the given MIME types."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": ["<Figure>"], **{m: "AAAA" for m in mimes}}}


def code_cell(*outputs: dict, tags: tuple[str, ...] = ()) -> dict:
    return {"cell_type": "code", "execution_count": 1, "metadata": {"tags": list(tags)},
            "source": ["plot()"], "outputs": list(outputs)}


def notebook(*cells: dict) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]}, *cells]}


#: One figure output, as the GOOD_NOTEBOOK page shows one <img>.
ONE_FIGURE = notebook(code_cell(output("image/png")),
                      code_cell({"output_type": "stream", "name": "stdout", "text": ["ok"]}))

NOTEBOOKS = ("notebooks/01_embedding_decomposition", "notebooks/02_untangled_attention")


def make_book(tmp_path: Path, pages: dict[str, str], images: tuple[str, ...] = ("fig.png",),
              notebooks: dict[str, dict | str | None] | None = None) -> Path:
    """Write the TOC, the HTML pages, the images and the notebooks' ``.ipynb`` (by default one
    figure output each; a value None leaves that notebook out, a str is written as is)."""
    (tmp_path / "_toc.yml").write_text(TOC)
    sources: dict[str, dict | str | None] = {name: ONE_FIGURE for name in NOTEBOOKS}
    sources.update(notebooks or {})
    for name, nb in sources.items():
        if nb is None:
            continue
        path = tmp_path / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nb if isinstance(nb, str) else json.dumps(nb))
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
    html = make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": no_fig}),
                     notebooks={"notebooks/02_untangled_attention": notebook(code_cell())})
    problems = check_book.check_book(tmp_path, html)
    # The navigation-bar logo is outside the article and does not count as a figure.
    assert problems == ["notebooks/02_untangled_attention: notebook page has no figure "
                        "(no <img> in the article); were its outputs saved?"]


def test_notebook_without_ipynb_still_needs_a_figure(tmp_path):
    no_fig = page('<p><span class="math">\\(a\\)</span></p>')
    html = make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": no_fig}),
                     notebooks={"notebooks/02_untangled_attention": None})
    problems = check_book.check_book(tmp_path, html)
    assert len(problems) == 1 and "notebook page has no figure" in problems[0]


def test_page_with_fewer_images_than_the_notebook_has_figures_is_reported(tmp_path):
    three = notebook(code_cell(output("image/png")), code_cell(output("image/jpeg")),
                     code_cell(output("image/svg+xml")))
    html = make_book(tmp_path, all_pages(), notebooks={"notebooks/01_embedding_decomposition": three})
    # The page shows one <img> (GOOD_NOTEBOOK) for three figure outputs.
    assert check_book.check_book(tmp_path, html) == [
        "notebooks/01_embedding_decomposition: notebook page shows 1 image(s) (<img> in the "
        "article) but notebooks/01_embedding_decomposition.ipynb stores 3 figure output(s) "
        "(image/png, image/jpeg, image/svg+xml); some figures were not rendered"]


def test_page_with_no_image_but_notebook_figures_is_reported_as_missing_figures(tmp_path):
    no_fig = page('<p><span class="math">\\(a\\)</span></p>', logo=True)
    html = make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": no_fig}))
    problems = check_book.check_book(tmp_path, html)
    assert len(problems) == 1
    assert problems[0].startswith("notebooks/02_untangled_attention: notebook page shows 0 image(s)")
    assert "stores 1 figure output(s)" in problems[0]


def test_as_many_or_more_images_than_figures_pass(tmp_path):
    two_imgs = page('<span class="math">\\(a\\)</span><img src="../_images/fig.png">'
                    '<img src="../_images/fig.png">')
    two = notebook(code_cell(output("image/png"), output("image/png")))
    html = make_book(tmp_path, all_pages(**{"notebooks/01_embedding_decomposition": two_imgs}),
                     notebooks={"notebooks/01_embedding_decomposition": two})
    assert check_book.check_book(tmp_path, html) == []
    # A markdown image adds an <img> that no output accounts for: more images is fine.
    three_imgs = two_imgs.replace("</article>", '<img src="../_images/fig.png"></article>')
    html = make_book(tmp_path, all_pages(**{"notebooks/01_embedding_decomposition": three_imgs}),
                     notebooks={"notebooks/01_embedding_decomposition": two})
    assert check_book.check_book(tmp_path, html) == []


def test_notebook_figures_counting_rules():
    nb = notebook(
        code_cell(output("image/png", "image/svg+xml")),  # one figure in two formats: counts once
        code_cell(output("image/jpeg"), {"output_type": "execute_result", "execution_count": 2,
                                         "metadata": {}, "data": {"image/svg+xml": "<svg/>"}}),
        code_cell(output("image/png"), tags=("remove-output",)),  # not rendered by the book
        code_cell(output("image/png"), tags=("remove-cell",)),
        code_cell(output("image/png"), tags=("remove-input",)),  # output still rendered
        code_cell(output("text/html"), {"output_type": "stream", "name": "stdout", "text": "x"}),
        {"cell_type": "markdown", "metadata": {}, "source": ["![a](a.png)"]},
    )
    assert check_book.notebook_figures(nb) == 4
    assert check_book.notebook_figures({"cells": []}) == 0


def test_unreadable_ipynb_is_reported(tmp_path):
    html = make_book(tmp_path, all_pages(),
                     notebooks={"notebooks/02_untangled_attention": "{not json"})
    problems = check_book.check_book(tmp_path, html)
    assert len(problems) == 1
    assert problems[0].startswith("notebooks/02_untangled_attention: cannot read "
                                  "notebooks/02_untangled_attention.ipynb as a notebook")


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
    make_book(tmp_path, all_pages(**{"notebooks/02_untangled_attention": page("<p>empty</p>")}),
              notebooks={"notebooks/02_untangled_attention": notebook()})
    assert check_book.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "no figure" in err and "no rendered math" in err


def test_main_without_build_exits_2(tmp_path, capsys):
    (tmp_path / "_toc.yml").write_text(TOC)
    assert check_book.main(["--root", str(tmp_path)]) == 2
    assert "run `jupyter-book build . -W` first" in capsys.readouterr().err


def sidebar(*titles: str) -> str:
    """The theme's sidebar as sphinx-book-theme writes it (one link per page title)."""
    links = "".join(f'<li class="toctree-l1"><a class="reference internal" href="x.html">{t}</a></li>'
                    for t in titles)
    return (f'<nav class="bd-links bd-docs-nav" aria-label="Main"><ul class="nav bd-sidenav">'
            f"{links}</ul></nav>")


def test_sidebar_titles_with_latex_are_reported_once(tmp_path):
    latex = ('1. The embedding decomposition <span class="math notranslate nohighlight">'
             '\\(\\mathbf{x} = \\mathbf{x}_P\\)</span>')
    nav = sidebar("The method", latex, "Costs in $")
    pages = {name: html.replace("<body>", f"<body>{nav}") for name, html in all_pages().items()}
    problems = check_book.check_book(tmp_path, make_book(tmp_path, pages))
    assert len(problems) == 2  # each raw title once, not once per page
    assert "\\(\\mathbf{x}" in problems[0] and "plain-text title" in problems[0]
    assert "Costs in $" in problems[1]


def test_plain_sidebar_titles_pass(tmp_path):
    nav = sidebar("The method", "1. The embedding decomposition: x = x<sub>P</sub> + x<sub>A</sub>")
    pages = {name: html.replace("<body>", f"<body>{nav}") for name, html in all_pages().items()}
    assert check_book.check_book(tmp_path, make_book(tmp_path, pages)) == []
