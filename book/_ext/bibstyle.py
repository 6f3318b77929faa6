"""A pybtex style for the bibliography page: entries sorted by author and year, each labelled
"Author et al., year", so the list reads like the author-year citations in the text.

Registered as ``authoryear`` and selected in ``_config.yml`` (``bibtex_default_style``).
"""

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            persons = entry.persons.get("author") or entry.persons.get("editor") or []
            year = entry.fields.get("year", "n.d.")
            if not persons:
                yield f"{entry.key}, {year}"
            elif len(persons) == 1:
                yield f"{_last_name(persons[0])}, {year}"
            elif len(persons) == 2:
                yield f"{_last_name(persons[0])} and {_last_name(persons[1])}, {year}"
            else:
                yield f"{_last_name(persons[0])} et al., {year}"


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabelStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
