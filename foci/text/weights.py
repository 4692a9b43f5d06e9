"""Prompt weighting syntax: ``(text)`` ×1.1 per level, ``(text:1.5)`` sets the weight, ``\\(`` ``\\)`` escape.

Behaves like ComfyUI's parser, which Fooocus uses (§1.10, §2.4), including how unbalanced parentheses degrade.
"""

from __future__ import annotations

PAREN_WEIGHT = 1.1
# Escaped parentheses are swapped for control-character pairs while parsing, then restored.
_ESCAPED_CLOSE = "\0\1"
_ESCAPED_OPEN = "\0\2"


def escape_parentheses(text: str) -> str:
    """Replace ``\\)`` and ``\\(`` by placeholders the parser does not see as brackets."""
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def unescape_parentheses(text: str) -> str:
    """Turn the placeholders of :func:`escape_parentheses` back into literal ``)`` and ``(``."""
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def split_top_level_groups(text: str) -> list[str]:
    """Split ``text`` into plain runs and top-level ``(...)`` groups (groups keep their brackets).

    A ``)`` without a matching ``(`` drives the depth negative; the text then stays in one plain run until
    the depth returns to zero at a ``)``. An unclosed ``(`` leaves the rest as one run starting with ``(``.
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted_pieces(text: str, inherited: float) -> list[tuple[str, float]]:
    result: list[tuple[str, float]] = []
    for piece in split_top_level_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            weight = inherited * PAREN_WEIGHT
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            result.extend(_weighted_pieces(inner, weight))
        else:
            result.append((piece, inherited))
    return result


def parse_weighted_segments(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(segment, weight)`` pairs, in order, with escapes resolved.

    ``((a))`` → 1.1·1.1; ``(a:1.5)`` and ``((a:1.5))`` → 1.5 (an explicit weight replaces the inherited one);
    ``(a:abc)`` keeps the colon and gets ×1.1; ``\\(a\\)`` is literal text of weight 1; ``[a]`` is plain text.
    """
    return [(unescape_parentheses(segment), weight)
            for segment, weight in _weighted_pieces(escape_parentheses(text), 1.0)]
