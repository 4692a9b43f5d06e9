"""Full prompt assembly for one image: lines, inline LoRA tags, wildcards, arrays, styles, expansion (§2.2).

Per Generate, :func:`extract_inline_loras` reads ``<lora:stem:weight>`` tags from the main prompt line once (the
whole batch shares the LoRA set, §2.25 item 9). Per image, :func:`plan_image_prompts` builds the item lists that
are encoded, in Fooocus's exact order and with the same random draws from ``random.Random(task_seed)``.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from foci.text.prompts import PromptPlan, split_lines
from foci.text.styles import FOOOCUS_V2, PROMPT_PLACEHOLDER, RANDOM_STYLE, StyleError, StyleLibrary
from foci.text.wildcards import WildcardLibrary, apply_arrays

INLINE_LORA = re.compile(r"<lora:([^:>]+):([+-]?(?:\d+(?:\.\d*)?|\.\d+))>")
DEFAULT_MAX_LORAS = 5

_SPACES = re.compile(r" +")
_log = logging.getLogger(__name__)


@dataclass
class InlineLoras:
    """What the main prompt line's LoRA tags amount to."""

    prompt: str
    """The main line with every tag removed and commas cleaned."""
    loras: list[tuple[str, float]] = field(default_factory=list)
    """LoRAs to add after the UI slots: (file name from ``available``, weight), capped by the limit."""
    unknown: list[str] = field(default_factory=list)
    """Tag names that match no available LoRA file (their tags are still removed)."""
    over_limit: list[tuple[str, float]] = field(default_factory=list)
    """Found LoRAs dropped because the UI slots and earlier tags already reach the limit."""


def cleanup_commas(text: str) -> str:
    """Fooocus's comma cleanup: collapse spaces, drop empty comma-separated parts, join parts with ``", "``."""
    parts = (_SPACES.sub(" ", part).strip() for part in text.split(","))
    return ", ".join(part for part in parts if part)


def _lora_stem(filename: str) -> str:
    return PurePath(filename.replace("\\", "/")).stem


def _same_file(existing: str, found: str) -> bool:
    """Whether a UI slot's name (a file name or a path) designates the found relative file name."""
    existing_posix = existing.replace("\\", "/")
    found_posix = found.replace("\\", "/")
    return existing_posix == found_posix or existing_posix.endswith("/" + found_posix)


def _main_line(prompt: str) -> str:
    lines = split_lines(prompt)
    return lines[0] if lines else ""


def _scan_lora_tags(line: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove every LoRA tag from one line, comma-clean it, and list the tags' (name, weight) in order.

    Tags are looked for inside each comma-separated part, so a tag name never contains a comma.
    """
    kept_parts = []
    tags: list[tuple[str, float]] = []
    for part in line.split(","):
        for match in list(INLINE_LORA.finditer(part)):
            tags.append((match.group(1), float(match.group(2))))
            part = part.replace(match.group(0), "")
        kept_parts.append(part)
    return cleanup_commas(",".join(kept_parts)), tags


def parse_inline_loras(prompt: str, available: Sequence[str], *, existing: Sequence[str] = (),
                       limit: int = DEFAULT_MAX_LORAS) -> InlineLoras:
    """Read ``<lora:stem:weight>`` tags from the main line of ``prompt`` (§1.10).

    ``available`` are LoRA file names relative to the LoRA folder (subfolders allowed), searched in order for
    the first one whose stem equals the tag's name. ``existing`` are the UI slots' file names: a tag for one of
    them is ignored, as is an exact (file, weight) repeat of an earlier tag. The UI slots plus the new LoRAs are
    capped at ``limit``. Tags are removed (also unknown ones) and the line is comma-cleaned, always — Fooocus
    cleans the main line even when it holds no tag.
    """
    cleaned, tags = _scan_lora_tags(_main_line(prompt))
    found: list[tuple[str, float]] = []
    unknown: list[str] = []
    for stem, weight in tags:
        filename = next((name for name in available if _lora_stem(name) == stem), None)
        if filename is None:
            unknown.append(stem)
            _log.warning("inline LoRA <lora:%s:%s> matches no LoRA file; tag removed", stem, weight)
        else:
            found.append((filename, weight))
    slots = [name for name in existing if name and name != "None"]
    new: list[tuple[str, float]] = []
    for lora in found:
        if any(_same_file(name, lora[0]) for name in slots) or lora in new:
            continue
        new.append(lora)
    room = max(0, limit - len(slots))
    return InlineLoras(cleaned, new[:room], unknown, new[room:])


def extract_inline_loras(prompt: str, available: Sequence[str], *, existing: Sequence[str] = (),
                         limit: int = DEFAULT_MAX_LORAS) -> tuple[str, list[tuple[str, float]]]:
    """The cleaned main prompt line and the LoRAs its tags add; unknown names are logged (see parse_inline_loras)."""
    result = parse_inline_loras(prompt, available, existing=existing, limit=limit)
    return result.prompt, result.loras


@dataclass(frozen=True)
class PromptLines:
    """§2.2 step 1 for one Generate: the cleaned lines of both prompt boxes."""

    main: str
    extra_positive: tuple[str, ...]
    negative: str
    extra_negative: tuple[str, ...]
    expansion_allowed: bool
    """The main line was non-empty before tag removal (Fooocus decides this before parsing LoRA tags)."""


def split_prompt(prompt: str, negative: str) -> PromptLines:
    """Split both boxes into cleaned lines; the main line loses its LoRA tags and is comma-cleaned."""
    positive_lines = split_lines(prompt) or [""]
    negative_lines = split_lines(negative) or [""]
    main = _scan_lora_tags(positive_lines[0])[0]
    return PromptLines(main, tuple(positive_lines[1:]), negative_lines[0], tuple(negative_lines[1:]),
                       expansion_allowed=positive_lines[0] != "")


@dataclass
class ImagePrompts:
    """Everything one image encodes; pooled vectors are summed over the first ``*_top_k`` items."""

    seed: int
    task_prompt: str
    task_negative: str
    positive: list[str]
    negative: list[str]
    positive_top_k: int
    negative_top_k: int
    expansion: str = ""
    styles: list[str] = field(default_factory=list)
    """Template styles applied, in order, with ``Random Style`` resolved and ``Fooocus V2`` left out."""
    extra_positive: list[str] = field(default_factory=list)
    extra_negative: list[str] = field(default_factory=list)
    use_expansion: bool = False

    @property
    def log_positive(self) -> str:
        """The user's positive text after wildcards/arrays, as Fooocus logs it (main line + extra lines)."""
        return "\n".join([self.task_prompt, *self.extra_positive])

    @property
    def log_negative(self) -> str:
        """The user's negative text after wildcards, as Fooocus logs it."""
        return "\n".join([self.task_negative, *self.extra_negative])

    def to_prompt_plan(self) -> PromptPlan:
        """The engine's :class:`foci.text.prompts.PromptPlan` view of these prompts."""
        return PromptPlan(list(self.positive), list(self.negative), self.positive_top_k, self.negative_top_k,
                          self.expansion)


def _non_empty(items: list[str], default: str) -> list[str]:
    """Fooocus's ``remove_empty_str(items, default)``: drop empty strings; none left → ``[default]``."""
    kept = [item for item in items if item != ""]
    return kept or [default]


def plan_image_prompts(prompt: str, negative: str, styles: Sequence[str], *, seed: int, image_index: int,
                       library: StyleLibrary, wildcards: WildcardLibrary, read_wildcards_in_order: bool = False,
                       expand: Callable[[str, int], str] | None = None) -> ImagePrompts:
    """Assemble the positive and negative item lists of one image (§2.2 steps 1, 3 and 4).

    ``seed`` is the image's task seed (``(seed + i) mod 2**63``) and ``image_index`` its index ``i`` in the
    batch. ``expand(task_prompt, seed)`` is the Fooocus V2 expansion; it is called only when ``Fooocus V2`` is
    selected and the main line is not empty, and its result becomes the last positive item.
    """
    selected = library.validate(styles)
    lines = split_prompt(prompt, negative)
    rng = random.Random(seed)

    def wild(text: str) -> str:
        return wildcards.expand(text, rng, read_in_order=read_wildcards_in_order, image_index=image_index)

    task_prompt = apply_arrays(wild(lines.main), image_index)
    task_negative = wild(lines.negative)
    extra_positive = [wild(line) for line in lines.extra_positive]
    extra_negative = [wild(line) for line in lines.extra_negative]

    use_expansion = FOOOCUS_V2 in selected and lines.expansion_allowed
    templates = [name for name in selected if name != FOOOCUS_V2]
    applied: list[str] = []
    positive: list[str] = []
    negative_items: list[str] = []
    if templates:
        placeholder_seen = False
        for name in templates:
            if name == RANDOM_STYLE:
                pool = library.random_style_pool()
                if not pool:
                    raise StyleError("'Random Style' selected but the style library has no template style")
                name = rng.choice(pool)
            applied.append(name)
            style_positive, style_negative = library.apply(name, task_prompt)
            placeholder_seen = placeholder_seen or PROMPT_PLACEHOLDER in library.get(name).prompt
            positive.extend(style_positive)
            negative_items.extend(style_negative)
        if not placeholder_seen:
            positive.insert(0, task_prompt)
    else:
        positive.append(task_prompt)
    negative_items.append(task_negative)

    positive = _non_empty(positive + extra_positive, task_prompt)
    negative_items = _non_empty(negative_items + extra_negative, task_negative)
    plan = ImagePrompts(seed=seed, task_prompt=task_prompt, task_negative=task_negative, positive=positive,
                        negative=negative_items, positive_top_k=len(positive), negative_top_k=len(negative_items),
                        styles=applied, extra_positive=extra_positive, extra_negative=extra_negative,
                        use_expansion=use_expansion)
    if use_expansion and expand is not None:
        plan.expansion = expand(task_prompt, seed)
        plan.positive = [*plan.positive, plan.expansion]
    return plan
