"""Markdown report cells hold any text: GFM splits each table row into exactly its cells,
and each cell reads back as the text it shows, with nothing GitHub links or mentions in it
(checked with a small reference reader)."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadow.record import DiffExample
from shadow.report import PathStat, Report, RouteReport
from shadow.report_format import _md, _md_code, _md_row, _shown, render

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
_SETTINGS = settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
# text made mostly of what Markdown and GFM tables act on
_tricky = st.text(alphabet=st.sampled_from("\\|`*_~[]<>&#$!: ax\n@./w"), max_size=24)
# pieces of what GitHub turns into a link or a mention, among what escapes sit next to
_LINKY = ["www.", "WwW.", "://", "http", "@", "&#64;", "a", "b.co", ".", "/", "_", "(", " ", "\\"]
_LINKY += ["#", "1", "GH-", "gh-"]  # issue references
_linky = st.lists(st.sampled_from(_LINKY), max_size=8).map("".join)
texts = st.one_of(_tricky, _linky, st.text(max_size=24))


def gfm_cells(row: str) -> list[str]:
    """A table row's cells as GFM reads them, before inline parsing: a `|` directly after a
    backslash is inside the cell, whatever comes before that backslash (cmark-gfm's cell
    scanner takes the longest match of `(escaped_char | [^|])+`); then the backslash
    directly before each such pipe is dropped, and spaces around a cell are trimmed."""
    line = row.strip()
    line = line.removeprefix("|")
    cells: list[str] = []
    start = 0
    for i, c in enumerate(line):
        if c == "|" and (i == 0 or line[i - 1] != "\\"):
            cells.append(line[start:i])
            start = i + 1
    if start < len(line):  # no closing pipe: the rest is the last cell
        cells.append(line[start:])
    return [cell.replace("\\|", "|").strip(" ") for cell in cells]


def code_span_text(cell: str) -> str | None:
    """What a cell that is one code span shows (CommonMark 6.1), None if it is not one."""
    m = re.fullmatch(r"(`+)(.*?)(`+)", cell, re.S)
    if m is None or m[1] != m[3] or re.search(rf"(?<!`){m[1]}(?!`)", m[2]):
        return None
    text = m[2]
    if len(text) >= 2 and text[0] == text[-1] == " " and text.strip(" "):
        text = text[1:-1]
    return text


_ACTIVE = set("\\`*_~[]<&#$")  # what opens or closes something inline (a pipe: the table's)
_ZWSP = "\u200b"


def plain_text(cell: str) -> str | None:
    """What a plain cell of `_md` shows, or None if anything in it would render as other
    than text: every active character backslash-escaped, spaces at its ends as `&#32;`;
    no `://` or `www.` as such in the source (GitHub links them after any character), and
    a zero-width space after every `@` the text shows (an e-mail link, a mention) and
    between `#` or `GH-` and a digit (an issue reference)."""
    out: list[str] = []
    i = 0
    while i < len(cell):
        if cell.startswith("&#32;", i):
            out.append(" ")
            i += 5
        elif cell.startswith("&#8203;", i):
            out.append(_ZWSP)
            i += 7
        elif cell[i] == "\\" and i + 1 < len(cell) and cell[i + 1] in string.punctuation:
            out.append(cell[i + 1])
            i += 2
        elif cell[i] in _ACTIVE or cell.startswith("://", i) or cell[i : i + 4].lower() == "www.":
            return None
        else:
            out.append(cell[i])
            i += 1
    shown = "".join(out)
    if re.search(f"@(?!{_ZWSP})|(?:#|gh-)\\d", shown, re.IGNORECASE):
        return None
    # the space after an `@`, or before an issue number, shows nothing
    return _REFERENCE_SPACE.sub("", shown.replace("@" + _ZWSP, "@"))


_REFERENCE_SPACE = re.compile(f"(?:(?<=#)|(?<=gh-)){_ZWSP}(?=\\d)", re.IGNORECASE)


@_SETTINGS
@given(texts)
def test_a_row_of_any_text_has_its_cells_and_shows_the_text(text: str) -> None:
    row = _md_row([_md(text), _md_code(text), "end"])
    cells = gfm_cells(row)
    assert len(cells) == 3, (text, row, cells)
    assert cells[2] == "end"
    assert plain_text(cells[0]) == _shown(text), (text, row)
    assert (code_span_text(cells[1]) if cells[1] else "") == _shown(text), (text, row)


@_SETTINGS
@given(texts)
def test_every_table_row_of_a_report_has_as_many_cells_as_its_header(text: str) -> None:
    route = RouteReport(
        route=text,
        mismatches=2,
        top_paths=(PathStat(text, 2, 1.0, DiffExample(text, text, text, [text])),),
        reasons=(text,),
    )
    lines = render(Report(T0, None, None, 300, (route,)), "markdown").splitlines()
    tables: list[list[list[str]]] = []
    for before, line in zip(["", *lines], lines, strict=False):
        if line.startswith("|"):
            if not before.startswith("|"):
                tables.append([])
            tables[-1].append(gfm_cells(line))
    assert len(tables) == 2  # the summary, the route's top paths
    for table in tables:
        head = len(table[0])
        assert [len(cells) for cells in table] == [head] * len(table), (text, table)
    [[_, _, [shown_route, *_]], [_, _, [pattern, *_]]] = tables
    assert plain_text(shown_route) == _shown(text)
    assert (code_span_text(pattern) if pattern else "") == _shown(text)


@pytest.mark.parametrize(
    ("text", "plain", "code"),
    [
        ("a|b", "a\\|b", "`a\\|b`"),
        ("a\\|b", "a\\\\\\|b", "`a\\\\|b`"),  # a backslash before a pipe: both kept
        ("a\\\\|b", "a\\\\\\\\\\|b", "`a\\\\\\|b`"),
        ("a\\", "a\\\\", "`a\\`"),
        ("`", "\\`", "`` ` ``"),  # a backtick in a code span: a longer fence, padded
        ("a`b", "a\\`b", "``a`b``"),
        ("x ``y`` z", "x \\`\\`y\\`\\` z", "```x ``y`` z```"),
        (" both ", "&#32;both&#32;", "`  both  `"),  # one space each side is the padding
        ("*em* _u_ ~s~", "\\*em\\* \\_u\\_ \\~s\\~", "`*em* _u_ ~s~`"),
        ("<b>&amp;[l](u)", "\\<b>\\&amp;\\[l\\](u)", "`<b>&amp;[l](u)`"),
        ("order-show", "order-show", "`order-show`"),
        ("$.items[*].price", "\\$.items\\[\\*\\].price", "`$.items[*].price`"),
        # what GitHub links or mentions: plain in a cell, as it is in a code span
        ("https://x.y/a", "https\\://x.y/a", "`https://x.y/a`"),
        ("www.x.y", "www\\.x.y", "`www.x.y`"),
        ("my_www.x.y", "my\\_www\\.x.y", "`my_www.x.y`"),  # after an escaped `_` too
        ("ops@x.io", "ops@&#8203;x.io", "`ops@x.io`"),
        ("@someone", "@&#8203;someone", "`@someone`"),
        ("mailto:a@b.c", "mailto:a@&#8203;b.c", "`mailto:a@b.c`"),
        ("v#12", "v\\#&#8203;12", "`v#12`"),  # an issue reference
        ("GH-7 gh-8", "GH-&#8203;7 gh-&#8203;8", "`GH-7 gh-8`"),
        ("#x", "\\#x", "`#x`"),
        ("", "", ""),
    ],
)
def test_cells_escape_as_gfm_reads_them(text: str, plain: str, code: str) -> None:
    assert (_md(text), _md_code(text)) == (plain, code)
    cells = gfm_cells(_md_row([plain, code]))
    assert len(cells) == 2
    assert plain_text(cells[0]) == text
    assert (code_span_text(cells[1]) if cells[1] else "") == text


def test_a_newline_stays_inside_its_cell() -> None:
    cells = gfm_cells(_md_row([_md("a\nb"), _md_code("a\r\nb")]))
    assert cells == ["a\\\\u000ab", "`a\\u000d\\u000ab`"]


def test_a_code_span_outside_a_table_keeps_its_pipes() -> None:
    assert _md_code("a|b`", cell=False) == "`` a|b` ``"
