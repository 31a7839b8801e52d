"""Text that came from somewhere else (a host's log, a health check's output, a reason), made
safe to print on the user's terminal: control characters shown as escapes (`\\x1b`), never
sent as they are, and each line bounded in length.

A host's output is not the user's to trust: `ESC]0;…BEL` retitles the terminal, `ESC[2J`
clears it, a carriage return overwrites what was printed, and one 200 kB line buries the rest.
What nix-hive prints about a host goes through `line` or `lines` (progress lines, the summary
and other tables, error lines, a failed step's log); JSON strings through `bounded` (JSON
escapes control characters itself). `nix-hive run` prints the user's own command's output as
it is. An SVG's text goes through `xml`: well-formed XML, whatever the text held.

What is cut to fit a terminal (the live view's lines, a table's cells) is measured in the
terminal's columns, not in characters: a wide character (CJK, `east_asian_width` W or F) takes
two, a combining mark none (`columns`, `cut`, `pad`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

LIMIT = 2000  # characters of one printed line, before the "... (N more characters)" marker

# C0 controls but tab and newline, DEL, C1 controls (`\x9b` is a one-byte CSI), the Unicode
# bidirectional controls, which reorder what a terminal shows, and what no UTF-8 text or XML
# document can hold: lone surrogates (a file name's undecodable bytes, as Python reads them)
# and the noncharacters U+FFFE and U+FFFF.
_SHOWN = "\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff"
_CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f{_SHOWN}]")
_CONTROL_AND_TABS = re.compile(f"[\x00-\x08\x09\x0b-\x1f{_SHOWN}]")
# What XML 1.0 forbids (its Char production): C0 controls but tab, line feed and carriage
# return; surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def bound(text: str, limit: int = LIMIT) -> str:
    """`text` cut at `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def line(text: str, limit: int = LIMIT, *, tabs: bool = False) -> str:
    """One printable line: its first `limit` characters, control characters (line breaks too)
    shown as escapes, then how many were left out. `tabs`: escape tabs too (a table cell)."""
    kept = text[:limit]
    # printable (str.isprintable: no character of the C or Z categories but the space) is
    # what most cells and lines are, and holds none of the characters shown as escapes
    shown = kept if kept.isprintable() else (_CONTROL_AND_TABS if tabs else _CONTROL).sub(_escaped, kept).replace(
        "\n", "\\n")
    return shown if len(text) <= limit else f"{shown}... ({len(text) - limit:,} more characters)"


def xml(text: str, limit: int = LIMIT) -> str:
    """One printable line (`line`) for an XML document's text or attribute value: `&<>"'`
    escaped, and no character XML 1.0 forbids (`line` shows them as escapes already; any
    left would be replaced)."""
    shown = _NOT_XML.sub("\ufffd", line(text, limit))
    return (shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


def lines(text: str, limit: int = LIMIT) -> list[str]:
    """`text` as printable lines: split at line breaks (a CR before one is dropped), each
    escaped and bounded by `line`."""
    return [line(part.removesuffix("\r"), limit) for part in text.split("\n")]


def block(text: str, limit: int = LIMIT) -> str:
    """`text` with each of its lines made printable (`lines`), joined again."""
    return "\n".join(lines(text, limit))


def cell(value: Any, limit: int = LIMIT) -> str:
    """A table cell: one printable line."""
    return line(str(value), limit, tabs=True)


def summary(items: Sequence[str], what: str, limit: int = 200) -> str:
    """A list that may be long, in at most `limit` characters or so: the items joined by
    spaces when that fits, else their count, the first ones and the last (`5,000 tasks
    (push:a, push:b, ..., push:z)`); an item itself is cut to `limit` characters."""
    joined = " ".join(items)
    if len(joined) <= limit:
        return joined
    if len(items) == 1:
        return bound(items[0], limit)
    last = bound(items[-1], limit)
    shown: list[str] = []
    used = len(last)
    for item in items[:-1]:
        used += len(item) + 2
        if used > limit:
            break
        shown.append(item)
    return f"{len(items):,} {what} ({', '.join([*shown, '...', last])})"


MORE = "…"  # what a line cut to fit ends with

_NUMBERED = re.compile(r"(.*?)([0-9]+)")


def _natural(name: str) -> tuple[str, int, str]:
    found = _NUMBERED.fullmatch(name)
    return (found.group(1), int(found.group(2)), name) if found else (name, -1, name)


def compact(names: Sequence[str]) -> str:
    """Host names as a person reads a long list of them: in natural order (`www-2` before
    `www-10`), each run of three or more that differ only by a number counting up by one
    written `first…last` (`db, www-1…www-120, www-122`)."""
    keys = sorted({_natural(n) for n in names})
    parts: list[str] = []
    n = 0
    while n < len(keys):
        end = n
        while (end + 1 < len(keys) and keys[n][1] >= 0 and keys[end + 1][0] == keys[n][0]
               and keys[end + 1][1] == keys[end][1] + 1):
            end += 1
        if end - n >= 2:
            parts.append(f"{keys[n][2]}{MORE}{keys[end][2]}")
        else:
            parts += [k[2] for k in keys[n:end + 1]]
        n = end + 1
    return ", ".join(parts)


@functools.lru_cache(maxsize=4096)
def _char_columns(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):  # combining marks, zero-width joiners
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def columns(text: str) -> int:
    """How many terminal columns `text` (one printable line) takes."""
    if text.isascii():
        return len(text)
    return sum(_char_columns(c) for c in text)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` columns: whole if it fits, else cut with an ellipsis (a wide
    character that would cross the edge is left out whole)."""
    if columns(text) <= width:
        return text
    if width <= 0:
        return ""
    room, used = width - len(MORE), 0
    for i, char in enumerate(text):
        used += _char_columns(char)
        if used > room:
            return text[:i] + MORE
    return text  # not reached: the text did not fit


def wrap(text: str, width: int, indent: str = "    ") -> list[str]:
    """`text` (one printable line) in lines of at most `width` columns, broken between words,
    the later lines indented by `indent`; a word longer than a line is broken where it must."""
    width = max(width, columns(indent) + 8)
    out: list[str] = []
    prefix, current = "", ""
    for word in text.split():
        if columns(prefix + current + (" " if current else "") + word) <= width:
            current += (" " if current else "") + word
            continue
        if current:
            out.append(prefix + current)
            prefix, current = indent, ""
        while columns(prefix + word) > width:
            head = _head(word, width - columns(prefix))
            out.append(prefix + head)
            prefix, word = indent, word[len(head):]
        current = word
    if current:
        out.append(prefix + current)
    return out


def _head(word: str, room: int) -> str:
    """The longest start of `word` that takes at most `room` columns (one character at least)."""
    used = 0
    for i, char in enumerate(word):
        used += _char_columns(char)
        if used > room:
            return word[:max(i, 1)]
    return word


def pad(text: str, width: int) -> str:
    """`text` padded with spaces to `width` columns."""
    return text + " " * max(width - columns(text), 0)


_STORE_PATH = re.compile(r"/nix/store/([0-9a-z]{32})-([^/\s]+)")
HASH_SHOWN = 7  # characters of a store path's hash in its short form


def short_path(text: str) -> str:
    """A store path as a person tells it apart: its name and the start of its hash
    (`nixos-system-www (lg1j8zk…)`); any other text as it is."""
    found = _STORE_PATH.fullmatch(text)
    return f"{found.group(2)} ({found.group(1)[:HASH_SHOWN]}{MORE})" if found else text


def bounded(data: Any, limit: int = LIMIT) -> Any:
    """JSON data with every string at most `limit` characters (and the marker)."""
    if isinstance(data, str):
        return bound(data, limit)
    if isinstance(data, dict):
        return {k: bounded(v, limit) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [bounded(v, limit) for v in data]
    return data
