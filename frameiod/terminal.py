"""Text from outside (event types, handler errors, plugin metadata, file names) made safe to
print on an operator's terminal, and the small habits of the commands' English: counted
nouns (`plural`) and cut columns (`cut`)."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["cut", "plural", "printable", "say"]


def printable(text: object) -> str:
    """``text`` as a string with every character a terminal would act on instead of show
    (control characters such as ESC, CR and LF, bidirectional overrides, other invisible
    format characters) written as a Python escape: ``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``.

    A signed event's ``type`` or a handler's error message is chosen by whoever sent it or
    raised it: printed raw, it can recolour, rewrite or hide lines of a table.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def say(line: str, file: TextIO | None = None) -> None:
    """Print one line of human-readable output (stdout by default) through `printable`."""
    print(printable(line), file=sys.stdout if file is None else file)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun`` agreeing with it: "1 delivery", "2 deliveries", "0 events".

    ``nouns`` is the plural when English does not follow the rule (a consonant and "y"
    make "ies", anything else takes "s").
    """
    if count == 1:
        return f"{count} {noun}"
    if nouns is None:
        y_after_consonant = noun.endswith("y") and noun[-2:-1] not in ("", *"aeiou")
        nouns = noun[:-1] + "ies" if y_after_consonant else noun + "s"
    return f"{count} {nouns}"


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending with "…" when some were cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _escape(char: str) -> str:
    # A space other than " " (no-break, ideographic) is escaped too: a table must not hide it.
    return char.encode("unicode_escape").decode("ascii")
