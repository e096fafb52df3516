"""User text shown through rich (the CLI's tables and messages)."""

from __future__ import annotations


def plain(text: object) -> str:
    """``text`` as rich shows it, not read as markup: "[/old]" in a name or path is no closing tag
    (which would fail the command) and "[draft]" is not swallowed."""
    from rich.markup import escape

    return escape(str(text))
