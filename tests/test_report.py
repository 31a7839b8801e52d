"""Tables that fit (issue 28): on a terminal, a table is as wide as the terminal, a line per
row, whatever its paths and reasons; piped (or with -v), it is the whole table, as before.
Widths are terminal columns (hive/text.py): a wide character takes two, a combining mark none."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios

from hypothesis import given, settings
from hypothesis import strategies as st
from tabulate import tabulate

from hive import text
from hive.report import FREE, Fit, Row, fitting, summary_table, table

WWW = "/nix/store/lg1j8zkq0v6xw3mlsd7rxhj0q2pzr3ab-nixos-system-www"
PORTICO = "/nix/store/0a9x8zkq0v6xw3mlsd7rxhj0q2pzr3ab-nixos-system-portico"
REASON = ("activate: rolled back: check http failed: curl: (7) Failed to connect to 127.0.0.1 port 80 after "
          "0 ms: Connection refused; the host rolled back to its previous system")
ROWS = [Row("portico", "portico", PORTICO, "ok", "", {"push": 0.4, "activate": 1.2}),
        Row("www-1", "www", WWW, "rolled back", REASON, {"activate": 3.2}),
        Row("www-2", "www", "", "skipped", "not started: wave 1 failed (www-1)")]


def lines_of(shown: str) -> list[str]:
    return shown.splitlines()


def test_piped_the_summary_is_the_whole_table_as_before() -> None:
    whole = summary_table(ROWS)
    assert whole == tabulate([(r.instance, r.system, r.path or "-", r.result, f"{sum(r.seconds.values()):.1f}",
                               r.reason) for r in ROWS],
                             headers=["instance", "system", "store path", "result", "seconds", "reason"],
                             tablefmt="simple", disable_numparse=True)
    assert WWW in whole and REASON in whole


def test_on_80_columns_the_summary_is_a_line_per_instance() -> None:
    everything = lines_of(summary_table(ROWS, 80))
    assert all(text.columns(ln) <= 79 for ln in everything), everything
    shown = everything[:2 + len(ROWS)]
    # then what it cut, whole, wrapped: the end of a reason often says why
    assert everything[2 + len(ROWS):2 + len(ROWS) + 2] == ["", "reasons cut above, whole:"]
    whole = everything[2 + len(ROWS) + 2:]
    assert whole[0].startswith("www-1: activate: rolled back:") and all(ln.startswith("    ") for ln in whole[1:])
    assert " ".join(ln.strip() for ln in whole) == f"www-1: {REASON}"  # www-2's short reason was whole above
    assert shown[0].split() == ["instance", "system", "result", "seconds", "reason"]  # no room for the paths
    www = shown[3]
    assert www.startswith("www-1 ") and "rolled back" in www and www.endswith(text.MORE)
    assert www.split("rolled back", 1)[1].split()[1:4] == ["activate:", "rolled", "back:"]  # its start, then cut
    assert shown[4].endswith("not started: wave 1 failed (www-1)")  # a short reason whole


def test_a_wider_terminal_shows_short_store_paths_last() -> None:
    shown = lines_of(summary_table(ROWS, 130))
    assert all(text.columns(ln) <= 129 for ln in shown), shown
    assert shown[0].split()[-2:] == ["store", "path"]
    assert shown[2].endswith("nixos-system-portico (0a9x8zk…)")
    assert shown[3].endswith("nixos-system-www (lg1j8zk…)")
    assert f"{text.MORE}  nixos-system-www" in shown[3]  # the reason cut before it
    assert shown[4].endswith("  -")


def test_a_table_that_fits_is_left_whole() -> None:
    rows = [Row("www-1", "www", WWW, "ok", "", {"activate": 1.0})]
    shown = lines_of(summary_table(rows, 200))
    assert WWW in shown[2] and shown[0].split()[2:4] == ["store", "path"]  # as it is, in its order


def test_status_drops_the_expected_path_before_the_current_one() -> None:
    headers = ["instance", "system", "expected path", "current path", "state", "reboot"]
    fit = (Fit.KEEP, Fit.KEEP, Fit.PATH, Fit.PATH, Fit.KEEP, Fit.CUT)
    rows = [("www-1", "www", WWW, PORTICO, "differs", "yes (kernel)"),
            ("www-2", "www", WWW, None, "not activated", "-")]
    shown = lines_of(table(rows, headers, width=80, fit=fit))
    assert all(text.columns(ln) <= 79 for ln in shown), shown
    assert shown[0].split() == ["instance", "system", "state", "reboot", "current", "path"]
    assert shown[2].endswith("yes (kernel)  nixos-system-portico (0a9x8zk…)")
    assert lines_of(table(rows, headers))[2].split()[2:4] == [WWW, PORTICO]  # piped: whole


def test_a_detail_column_gives_way_whole_before_the_free_text_is_cut() -> None:
    """Fit.DROP (status --from's serials): moved last and dropped while the free text would
    keep fewer than FREE columns; never shortened as a path is; kept when there is room."""
    headers = ["instance", "outcome", "reason", "applied", "published"]
    fit = (Fit.KEEP, Fit.KEEP, Fit.CUT, Fit.DROP, Fit.DROP)
    rows = [("web-frankfurt-01", "rolled-back", "the check http failed: connection refused", "1796664668007",
             "1796664671388")]
    shown = lines_of(table(rows, headers, width=80, fit=fit))
    assert all(text.columns(ln) <= 79 for ln in shown), shown
    assert shown[0].split() == ["instance", "outcome", "reason", "published"]  # the first detail went first
    assert shown[2].endswith(f"{text.MORE}  1796664671388")  # the serial whole, the reason cut to what is left
    assert len(shown[2].split("  ")[-2].strip()) >= FREE  # which is at least FREE columns
    narrow = lines_of(table(rows, headers, width=60, fit=fit))
    assert narrow[0].split() == ["instance", "outcome", "reason"] and "1796" not in narrow[2]
    assert lines_of(table(rows, headers, width=200, fit=fit))[0].split() == headers  # room: as it is


def test_wide_characters_are_measured_in_columns() -> None:
    assert text.columns("www-1") == 5 and text.columns("漢字") == 4 and text.columns("e\u0301") == 1
    assert text.cut("漢字漢字漢字", 7) == "漢字漢…" and text.columns(text.cut("漢字漢字漢字", 6)) <= 6
    assert text.cut("short", 7) == "short" and text.pad("漢字", 6) == "漢字  "
    shown = lines_of(table([("www-1", "ホストが応答しません" * 10), ("www-22", "ok")], ["instance", "detail"],
                           width=40, fit=(Fit.KEEP, Fit.CUT)))
    assert all(text.columns(ln) <= 39 for ln in shown), shown
    assert shown[3].index("ok") == shown[2].index("ホ")  # the columns line up


def test_a_terminal_too_narrow_for_the_headers_still_gets_a_line_per_row() -> None:
    shown = lines_of(summary_table(ROWS, 34))
    assert shown[2 + len(ROWS)] == "" and all(text.columns(ln) <= 33 for ln in shown), shown


def test_the_reasons_cut_are_shown_whole_the_first_ten() -> None:
    rows = [Row(f"www-{n}", "www", WWW, "failed", f"unreachable: ssh: Could not resolve hostname www-{n}.example.com: "
                "Name or service not known") for n in range(12)] + [Row("db", "db", "", "ok", "")]
    shown = lines_of(summary_table(rows, 80))
    at = shown.index("reasons cut above, whole:")
    assert at == 2 + len(rows) + 1
    assert [ln.split(":")[0] for ln in shown[at + 1::2][:10]] == [f"www-{n}" for n in range(10)]
    assert shown[-1] == "and 2 more: -v or --json shows every one whole"
    assert all(text.columns(ln) <= 79 for ln in shown), shown
    assert "reasons cut" not in summary_table(rows[-1:], 80) and "reasons cut" not in summary_table(rows)
    # the same reason once, with its instances
    same = [Row(name, "www", WWW, "failed", REASON) for name in ("www-1", "www-2", "www-3", "www-4", "www-5", "db")]
    shown = lines_of(summary_table(same, 80))
    at = shown.index("reasons cut above, whole:")
    assert shown[at + 1].startswith(f"db, www-1{text.MORE}www-5: activate: rolled back:"), shown
    assert " ".join(ln.strip() for ln in shown[at + 1:]) == f"db, www-1{text.MORE}www-5: {REASON}"


def test_wrap_keeps_to_its_columns_and_breaks_a_word_too_long() -> None:
    assert text.wrap("a b c", 20) == ["a b c"]
    assert text.wrap("alpha beta gamma delta", 12) == ["alpha beta", "    gamma", "    delta"]
    long = text.wrap("x" * 30, 12)
    assert long == ["x" * 12, "    " + "x" * 8, "    " + "x" * 8, "    " + "xx"]
    wide = text.wrap("ホストが応答しません " * 4, 16)
    assert all(text.columns(ln) <= 16 for ln in wide) and "".join(wide).replace(" ", "") == "ホストが応答しません" * 4


def test_a_table_fits_a_terminal_only() -> None:
    assert fitting(io.StringIO()) is None  # a pipe, a file
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        with os.fdopen(slave, "w", closefd=False) as terminal:
            assert fitting(terminal) == 80
            assert fitting(terminal, verbose=True) is None  # -v: every path whole
    finally:
        os.close(master)
        os.close(slave)


# Cells of every kind tabulate treats apart: spaces around (stripped), numbers and booleans
# (not parsed), empty, wide and non-ASCII (tabulate's own path), the longest of a column.
CELLS = st.one_of(st.sampled_from(["", " ", "1", "-2.5", "1,000", "True", "False", "None", " a ", "a  b", "x" * 40,
                                   "\u00e9t\u00e9", "\u6f22", "nan", "1e3", "0x1f", "-"]),
                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12))


@settings(max_examples=400, deadline=None)
@given(columns=st.integers(min_value=1, max_value=5), data=st.data())
def test_a_piped_table_is_tabulate_s_byte_for_byte(columns: int, data: st.DataObject) -> None:
    """report.table writes a table of printable ASCII itself (issue 29: tabulate looks at
    every cell's type, 0.15 s for `plan`'s 10,000 tasks), as tabulate's plain "simple"
    format with numbers not parsed would, byte for byte; other tables are tabulate's."""
    headers = data.draw(st.lists(CELLS, min_size=columns, max_size=columns))
    rows = data.draw(st.lists(st.lists(CELLS, min_size=columns, max_size=columns), max_size=6))
    assert table(rows, headers) == tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def test_a_5000_row_table_is_tabulate_s() -> None:
    rows = [(f"host-{n}", "web" if n % 2 else "db", f"ssh://relay-{n // 100}", f"rack{n // 40}", f"10.1.{n // 250}.{n}")
            for n in range(5000)]
    headers = ["instance", "system", "store", "tags", "address"]
    assert table(rows, headers) == tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(CELLS | st.sampled_from(["a\tb", "\x1b[31m", "\u202e", "y" * 30, 7, None]),
                              min_size=2, max_size=2), max_size=4),
       limit=st.sampled_from([8, 2000]))
def test_a_table_s_cells_are_printable_lines_whether_checked_at_once_or_one_by_one(rows: list[list[object]],
                                                                                    limit: int) -> None:
    """report.table looks at a table of printable strings at once (issue 29); its cells are
    still text.cell's: tabs and controls escaped, a long cell cut at `limit`, numbers as str."""
    cells = [[text.cell(c, limit) for c in row] for row in rows]
    assert table(rows, ["a", "b"], limit=limit) == tabulate(cells, headers=["a", "b"], tablefmt="simple",
                                                            disable_numparse=True)
