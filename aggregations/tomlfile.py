"""Reading the aggregations' TOML files (price plan, meters) with errors that name the line.

``tomllib`` gives dictionaries without positions, so an error about ``[meters.x] property``
would only say the key. :func:`line_of` finds the line back in the text (best effort: the
key's line inside its table, else the table's header line), so every message can say
"line 12, meters.x.property: ...".
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Final

_HEADER: Final = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\s]+?)\s*\]\]?\s*(#.*)?$")
_SYNTAX_LINE: Final = re.compile(r"line (\d+)")


def line_of(text: str, table: str | None, key: str) -> int | None:
    """The line of ``key =`` inside ``[table]`` (or at top level); else the table's header
    line; else None."""
    current: str | None = None
    header_line: int | None = None
    key_pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            if current == table:
                header_line = number
            continue
        if current == table and key_pattern.match(line):
            return number
    return header_line


def loads(text: str) -> tuple[dict[str, Any] | None, str, int | None]:
    """``(document, "", None)``, or ``(None, reason, line)`` when the text is not TOML."""
    try:
        return tomllib.loads(text), "", None
    except tomllib.TOMLDecodeError as error:
        match = _SYNTAX_LINE.search(str(error))
        return None, str(error), int(match.group(1)) if match else None
