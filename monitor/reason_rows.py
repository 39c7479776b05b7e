"""The row type of the one table of reasons (`monitor.reasons`), apart from the table itself.

Each kind of observation writes its own rows beside its prober (`monitor.kinds`), and the table
gathers them from the kinds' registry. The row type lives here so a kind can build its rows
without importing the table that gathers them, which would make the two import each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DURATION = r"\d+(?:ms|s|m|h|d)(?:\d+(?:ms|s|m|h|d))*"
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:Inf|inf)|NaN|nan"
#: One setting name, or several (`A, B`) when a probe needs more than one.
_NAMES = r"[A-Za-z_]\w*(?:(?:, | and )[A-Za-z_]\w*)*"


@dataclass(frozen=True, slots=True)
class Part:
    """What one placeholder of a tail matches, and whether citizens may read it."""

    pattern: str
    public: bool


#: Placeholder name -> what it matches. A new tail reuses one of these or adds its own here.
PARTS: dict[str, Part] = {
    "code": Part(r"\d{3}", public=True),
    "duration": Part(_DURATION, public=True),
    "value": Part(_NUMBER, public=True),
    "limit": Part(_NUMBER, public=True),
    "op": Part(r"<=|>=|==|!=|<|>", public=True),
    "expr": Part(r".+", public=False),
    "what": Part(r".+", public=False),
    "text": Part(r".*", public=False),
    "name": Part(_NAMES, public=False),
    "type": Part(r"[A-Za-z_][\w.]*", public=False),
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Reason:
    """One row: the probe's English phrase and its words for people.

    `zh` and `en` are for operators (alerts, reports, `check`) and may use every placeholder;
    `public_zh` / `public_en` are what the page writes when the tail holds a private part.
    """

    phrase: str
    zh: str
    en: str
    public_zh: str = ""
    public_en: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern, at = "", 0
        for match in _PLACEHOLDER.finditer(self.phrase):
            part = PARTS[match.group(1)]
            pattern += re.escape(self.phrase[at : match.start()])
            pattern += f"(?P<{match.group(1)}>{part.pattern})"
            at = match.end()
        pattern += re.escape(self.phrase[at:])
        object.__setattr__(self, "regex", re.compile(pattern))

    @property
    def prefix(self) -> str:
        """The fixed words the phrase starts with (what a probe's reason starts with)."""
        return self.phrase.split("{", 1)[0].rstrip(" (:")

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(_PLACEHOLDER.findall(self.phrase))

    @property
    def private(self) -> bool:
        """Whether the tail holds something citizens must not read."""
        return any(not PARTS[name].public for name in self.placeholders)

    def words(self, lang: str, public: bool) -> str:
        """The template in `lang` (`zh` or `en`); the page's own when `public` and private."""
        if public and self.private:
            return self.public_zh if lang == "zh" else self.public_en
        return self.zh if lang == "zh" else self.en
