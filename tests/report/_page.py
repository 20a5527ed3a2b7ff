"""A reader of report pages for the tests (the standard library's HTML parser): sections, their
tables (text and exact ``data-value`` of every cell), their figures' JSON, and every script."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Table:
    role: str
    caption: str = ""
    header: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[tuple[str, str | None]]] = dataclasses.field(default_factory=list)

    def column(self, name: str) -> list[str | None]:
        """The exact values (``data-value``) of one column."""
        index = self.header.index(name)
        return [row[index][1] for row in self.rows]

    def as_dict(self) -> dict[str, tuple[str, str | None]]:
        """A two-column table as label -> (text, data-value)."""
        return {row[0][0]: row[1] for row in self.rows}


@dataclasses.dataclass
class Part:
    kind: str
    title: str = ""
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def table(self, role: str) -> Table:
        found = [t for t in self.tables if t.role == role]
        assert len(found) == 1, (role, [t.role for t in self.tables])
        return found[0]


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.heading = ""
        self.notes = ""
        self.sections: list[Part] = []
        self.scripts: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self._text: list[str] = []
        self._cell: tuple[str, str | None] | None = None
        self._row: list[tuple[str, str | None]] | None = None
        self._in_head_row = False
        self._script: dict[str, Any] | None = None
        self.feed(text)

    # -- parsing --------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self._text = []
        if tag == "section":
            self.sections.append(Part(kind=a.get("data-kind") or ""))
        elif tag == "table":
            self.sections[-1].tables.append(Table(role=a.get("data-role") or ""))
        elif tag == "tr":
            self._row = []
        elif tag == "thead":
            self._in_head_row = True
        elif tag == "tbody":
            self._in_head_row = False
        elif tag == "td":
            self._cell = ("", a.get("data-value"))
        elif tag == "script":
            self._script = {"attrs": a, "text": ""}
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text)
        if tag == "title":
            self.title = text
        elif tag == "h1":
            self.heading = text
        elif tag == "h2" and self.sections:
            self.sections[-1].title = text
        elif tag == "caption":
            self.sections[-1].tables[-1].caption = text
        elif tag == "th" and self._in_head_row:
            self.sections[-1].tables[-1].header.append(text)
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append((text, self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None and not self._in_head_row:
            self.sections[-1].tables[-1].rows.append(self._row)
            self._row = None
        elif tag == "script" and self._script is not None:
            self._script["text"] = text
            self.scripts.append(self._script)
            if self._script["attrs"].get("class") == "lv-figure-data":
                self.sections[-1].figures.append(json.loads(text))
            self._script = None
        if self._stack:
            self._stack.pop()
        self._text = []

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def read(path: Path) -> tuple[Page, str]:
    text = Path(path).read_text(encoding="utf-8")
    page = Page(text)
    start = text.find('id="lv-notes">')
    if start >= 0:
        from html import unescape

        page.notes = unescape(text[start + len('id="lv-notes">') : text.find("</div>", start)])
    return page, text
