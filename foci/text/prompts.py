"""Prompt assembly: turn the user's text into the lists of items that are encoded (§2.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DOUBLE_SPACE = re.compile(r" {2,}")


def safe_str(text: str) -> str:
    """Fooocus's cleaning: collapse repeated spaces and strip ``,. \\r\\n`` at both ends."""
    return _DOUBLE_SPACE.sub(" ", str(text)).strip(",. \r\n")


def split_lines(text: str) -> list[str]:
    """Clean each line of a prompt box and drop the empty ones."""
    return [line for line in (safe_str(part) for part in str(text).splitlines()) if line]


@dataclass
class PromptPlan:
    """The items one image encodes; pooled vectors are summed over the first *_top_k items."""

    positive: list[str]
    negative: list[str]
    positive_top_k: int
    negative_top_k: int
    expansion: str = ""
    extra: dict[str, str] = field(default_factory=dict)
