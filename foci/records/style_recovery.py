"""Recovering the styles from a written prompt pair (a1111-scheme files written by Fooocus or AUTOMATIC1111 carry
the styled prompt texts but no list of styles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foci.text.prompt_plan import split_prompt
from foci.text.styles import FOOOCUS_V2, PROMPT_PLACEHOLDER, StyleLibrary

_SEPARATOR = ", "
_SEARCH_BUDGET = 4000  # search nodes per call; far above what real prompts need


def _items_text(template: str) -> str:
    """A style text as it appears in a written prompt: its non-empty lines, each an item, joined by ``", "``."""
    return _SEPARATOR.join(line for line in template.splitlines() if line)


def _strip_front(text: str, piece: str) -> str | None:
    """``text`` without the leading items ``piece`` (followed by ``", "`` or the end); None if it does not lead."""
    if text == piece:
        return ""
    if text.startswith(piece + _SEPARATOR):
        return text[len(piece) + len(_SEPARATOR):]
    return None


def _remove_items(text: str, piece: str) -> str | None:
    """``text`` without the first occurrence of the whole items ``piece``; None if it holds no such occurrence."""
    start = 0
    while (index := text.find(piece, start)) >= 0:
        end = index + len(piece)
        before_ok = index == 0 or text[:index].endswith(_SEPARATOR)
        after_ok = end == len(text) or text.startswith(_SEPARATOR, end)
        if before_ok and after_ok:
            head = text[:index].removesuffix(_SEPARATOR) if index else ""
            tail = text[end:].removeprefix(_SEPARATOR)
            return _SEPARATOR.join(part for part in (head, tail) if part)
        start = index + 1
    return None


def _item_starts(text: str) -> list[int]:
    """Offsets in ``text`` where an item may start: 0 and just after every ``", "``."""
    starts = [0]
    index = text.find(_SEPARATOR)
    while index >= 0:
        starts.append(index + len(_SEPARATOR))
        index = text.find(_SEPARATOR, index + 1)
    return starts


@dataclass(frozen=True)
class _Template:
    """One library style in written form."""

    name: str
    positive: str
    negative: str


@dataclass(frozen=True)
class _Parse:
    """A way of reading a prompt pair: styles un-wrapped so far, what is left, and the prompt they wrapped."""

    styles: tuple[str, ...]
    positive: str
    negative: str
    prompt: str | None
    displaced: int = 0
    """Styles whose positive text was found after the front (possible only without a placeholder style)."""


class _StyleSearch:
    """Depth-first search for the longest sequence of styles that un-wraps a positive/negative pair.

    Fooocus writes the selected styles' positive items first (each with the prompt substituted) and their negative
    items first, both in selection order; so each step peels one style off the front of both texts. Every
    placeholder style must have wrapped the same prompt. The search is bounded by a node budget.
    """

    def __init__(self, templates: Sequence[_Template], hint: str | None) -> None:
        self.templates = templates
        self.hint = hint
        self.budget = _SEARCH_BUDGET

    def _score(self, parse: _Parse) -> tuple[int, bool, int]:
        return len(parse.styles), self.hint is not None and parse.prompt == self.hint, -parse.displaced

    def _prompt_options(self, text: str, template: str, known: str | None) -> list[tuple[str, str]]:
        """(prompt, rest) pairs for which ``text`` starts with ``template`` filled with that prompt."""
        if known is not None:
            rest = _strip_front(text, template.replace(PROMPT_PLACEHOLDER, known))
            return [] if rest is None else [(known, rest)]
        head, _, tail = template.partition(PROMPT_PLACEHOLDER)
        if not text.startswith(head):
            return []
        body = text[len(head):]
        literal = tail.partition(PROMPT_PLACEHOLDER)[0]
        if literal:
            ends = []
            index = body.find(literal)
            while index >= 0:
                ends.append(index)
                index = body.find(literal, index + 1)
        else:
            ends = [start - len(_SEPARATOR) for start in _item_starts(body)[1:]] + [len(body)]
        candidates = [self.hint] if self.hint is not None else []
        candidates += [body[:end] for end in sorted(ends, reverse=True)]
        options: list[tuple[str, str]] = []
        for prompt in dict.fromkeys(candidates):
            rest = _strip_front(text, template.replace(PROMPT_PLACEHOLDER, prompt))
            if rest is not None:
                options.append((prompt, rest))
        return options

    def run(self, positive: str, negative: str, used: tuple[str, ...] = (), prompt: str | None = None,
            displaced: int = 0) -> _Parse:
        """The best parse of the texts (most styles; then the one agreeing with the hint; then in order)."""
        best = _Parse(used, positive, negative, prompt, displaced)
        for template in self.templates:
            if self.budget <= 0:
                break
            if template.name in used:
                continue
            negative_rest = _strip_front(negative, template.negative) if template.negative else negative
            if negative_rest is None:
                continue
            moved = 0
            if not template.positive:
                options = [(prompt, positive)]
            elif PROMPT_PLACEHOLDER in template.positive:
                options = self._prompt_options(positive, template.positive, prompt)
            elif (front := _strip_front(positive, template.positive)) is not None:
                options = [(prompt, front)]
            else:
                rest = _remove_items(positive, template.positive)
                options, moved = ([], 0) if rest is None else ([(prompt, rest)], 1)
            for found_prompt, positive_rest in options:
                self.budget -= 1
                parse = self.run(positive_rest, negative_rest, (*used, template.name), found_prompt,
                                 displaced + moved)
                if self._score(parse) > self._score(best):
                    best = parse
        return best


def _split_expansion(text: str, prompt: str, *, skip_first: bool) -> tuple[str, str] | None:
    """(text before, expansion) when ``text`` ends with a Fooocus V2 expansion of ``prompt``, else None.

    The expansion is the last item sequence and starts with the prompt and a comma; its words never repeat a
    token of the prompt, so the last such start is the right one. ``skip_first`` ignores offset 0 (the prompt
    item itself when no style wrapped the prompt).
    """
    lead = prompt + _SEPARATOR
    starts = [start for start in _item_starts(text) if text.startswith(lead, start) and len(text) > start + len(lead)]
    if skip_first:
        starts = [start for start in starts if start > 0]
    if not prompt or not starts:
        return None
    start = starts[-1]
    return text[:start].removesuffix(_SEPARATOR), text[start:]


def extract_styles_from_prompt(
    positive: str,
    negative: str,
    library: StyleLibrary,
    *,
    raw_prompt: str | None = None,
    expansion: str | None = None,
) -> tuple[list[str], str, str]:
    """Recover the styles that produced a written prompt pair: (styles, the real prompt, the real negative).

    ``positive`` / ``negative`` are the full texts of an a1111-scheme record (every encoded item joined by
    ``", "``). Styles of ``library`` whose positive template (``{prompt}`` filled with one common prompt) and
    negative text lead the texts are peeled off in turn; they come back in the order they were applied. When
    nothing matches, both texts come back unchanged and the list is empty.

    ``Fooocus V2`` is added first when the positive text ends with a prompt expansion: ``expansion`` (the
    ``Prompt expansion`` value) when given, otherwise an item run that starts with the prompt and a comma, which
    can be told only when the prompt is known: wrapped by a style, or the main line of ``raw_prompt``. Text left
    after the wrapped prompt (extra prompt lines) becomes further lines of the returned prompt.
    """
    templates = [
        _Template(name, _items_text(style.prompt), _items_text(style.negative_prompt))
        for name in library.template_names()
        if (style := library.get(name)).prompt.strip() or style.negative_prompt.strip()
    ]
    hint = (split_prompt(raw_prompt, "").main or None) if raw_prompt else None
    parse = _StyleSearch(templates, hint).run(positive, negative)
    rest = parse.positive
    v2 = False
    if expansion:
        if rest == expansion:
            rest, v2 = "", True
        elif rest.endswith(_SEPARATOR + expansion):
            rest, v2 = rest[: -len(_SEPARATOR + expansion)], True
    else:
        anchor = parse.prompt if parse.prompt is not None else hint
        split = _split_expansion(rest, anchor or "", skip_first=parse.prompt is None)
        if split is not None:
            rest, v2 = split[0], True
    if not parse.styles and not v2:
        return [], positive, negative
    prompt = rest if parse.prompt is None else "\n".join(part for part in (parse.prompt, rest) if part)
    return ([FOOOCUS_V2] if v2 else []) + list(parse.styles), prompt, parse.negative
