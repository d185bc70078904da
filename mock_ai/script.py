"""What a mock provider answers and how: the `#mock` directive and the deterministic answer."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

# Mixed scripts on purpose: CJK (3 UTF-8 bytes), Latin with accents (2), ASCII (1) and
# emoji outside the BMP (4 bytes, a surrogate pair in UTF-16), so every relay hop and
# every split=N boundary gets exercised on multi-byte text.
VOCABULARY: tuple[str, ...] = (
    "你好", "世界", "流式", "传输", "模型", "回答", "数据", "连接", "延迟", "令牌",
    "，", "。", "！", "、",
    " stream", " token", " relay", " hello", " world", " SSE", " WebSocket",
    " latency", " 42", " and", " the", " ok",
    "é", "über", " naïve", "日本語", "한국어", "—", "…",
    "🚀", "😀", "𝄞", " ✓", "☕",
)

# A line is a directive when, after optional indentation, it starts with `#mock` as a word.
_DIRECTIVE = re.compile(r"^[ \t]*#mock(?=[ \t\r]|$)([^\n]*)(?:\n|$)", re.MULTILINE)


class DirectiveError(ValueError):
    """A `#mock` directive or a default has an unknown key or a bad value."""


@dataclass(frozen=True)
class Fault:
    """A scripted failure: `name` from NAMES, `after` = tokens sent before it strikes."""

    name: str
    after: int = 0

    # The faults that take `:N` (tokens before they strike); the others take none.
    COUNTED: ClassVar[frozenset[str]] = frozenset(
        {"error_after", "drop_after", "stall_after", "malformed_after"})
    PLAIN: ClassVar[frozenset[str]] = frozenset(
        {"error_before", "http_429", "http_500", "http_503", "http_529", "handshake_401"})

    @classmethod
    def parse(cls, text: str) -> Fault | None:
        """`drop_after:5` -> Fault("drop_after", 5); `none` -> None."""
        name, sep, count = text.partition(":")
        if name == "none" and not sep:
            return None
        if name in cls.PLAIN and not sep:
            return cls(name)
        if name in cls.COUNTED and sep:
            return cls(name, _number(int, "fault", count))
        raise DirectiveError(f"unknown fault {text!r}: use one of "
                             f"{sorted(cls.PLAIN)} or {sorted(n + ':N' for n in cls.COUNTED)}")

    @property
    def http_status(self) -> int | None:
        """The HTTP status a handshake-level fault answers with, else None."""
        if self.name == "handshake_401":
            return 401
        if self.name.startswith("http_"):
            return int(self.name.removeprefix("http_"))
        return None

    def __str__(self) -> str:
        return f"{self.name}:{self.after}" if self.name in self.COUNTED else self.name


@dataclass(frozen=True)
class Script:
    """One request's answer plan: the prompt plus every directive key, defaults filled in."""

    prompt: str = ""
    tokens: int = 12
    interval_ms: float = 20.0
    first_token_ms: float = 0.0
    split: int = 0              # SSE vendors: write frames in pieces of this many bytes; 0 = whole
    stamp: bool = False         # token text becomes "[<time.monotonic_ns() at send>]"
    finish: str = "stop"        # stop | length
    usage: bool = True
    tag: str = ""
    error: str = ""             # the error type/code an error fault carries, where the vendor has a choice
    beta: bool = False          # Realtime: the beta event names (`response.text.delta`)
    fail_times: int | None = None   # None: the fault strikes every time
    fault: Fault | None = None

    @classmethod
    def parse(cls, text: str, defaults: Script | Mapping[str, Any] | None = None) -> Script:
        """The script of a last user message: `#mock` lines override `defaults` and are cut from the prompt."""
        script = coerce(defaults)
        overrides: dict[str, Any] = {}
        for match in _DIRECTIVE.finditer(text):
            overrides.update(parse_directive(match.group(1)))
        prompt = _DIRECTIVE.sub("", text).strip()
        return dataclasses.replace(script, prompt=prompt, **overrides)

    def answer_tokens(self) -> list[str]:
        """The answer, token by token: `tokens` draws from VOCABULARY seeded by the prompt alone.

        Seeding from sha256 (not `hash()`) keeps answers stable across processes; drawing
        one token at a time makes a shorter answer a prefix of a longer one.
        """
        rng = random.Random(hashlib.sha256(self.prompt.encode()).digest())
        return [rng.choice(VOCABULARY) for _ in range(self.tokens)]

    def answer_text(self) -> str:
        """The answer a client must reassemble (without `stamp`, which replaces token text)."""
        return "".join(self.answer_tokens())

    def replace(self, **changes: Any) -> Script:
        return dataclasses.replace(self, **changes)


def parse_directive(text: str) -> dict[str, Any]:
    """`tokens=3 fault=drop_after:1` -> {"tokens": 3, "fault": Fault("drop_after", 1)}."""
    text = text.strip()
    if text.startswith("#mock"):
        text = text.removeprefix("#mock")
    overrides: dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise DirectiveError(f"directive item {item!r} is not key=value")
        overrides[key] = _value(key, value)
    return overrides


def coerce(defaults: Script | Mapping[str, Any] | None) -> Script:
    """A Script from CLI-style defaults; None values (options left unset) are skipped."""
    if defaults is None:
        return Script()
    if isinstance(defaults, Script):
        return defaults
    values = {}
    for key, value in defaults.items():
        key = key.replace("-", "_")
        if value is None:
            continue
        if key == "fault" and isinstance(value, Fault):
            values[key] = value
        else:
            values[key] = _value(key, value if isinstance(value, str) else _plain(value))
    return Script(**values)


def _plain(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _value(key: str, text: str) -> Any:
    parse = _PARSERS.get(key)
    if parse is None:
        raise DirectiveError(f"unknown directive key {key!r}: use one of {sorted(_PARSERS)}")
    return parse(text)


def _number(kind: type, key: str, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise DirectiveError(f"{key}={text!r} is not a {kind.__name__}") from None
    if not value >= 0:  # also refuses NaN
        raise DirectiveError(f"{key}={text!r} must not be negative")
    return value


def _flag(key: str, text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise DirectiveError(f"{key}={text!r} must be 0 or 1")


def _word(key: str, text: str) -> str:
    if not re.fullmatch(r"[a-z_]+", text):
        raise DirectiveError(f"{key}={text!r} must be a lower-case word like overloaded_error")
    return text


def _choice(key: str, text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise DirectiveError(f"{key}={text!r} must be one of {allowed}")
    return text


_PARSERS = {
    "tokens": lambda v: _number(int, "tokens", v),
    "interval_ms": lambda v: _number(float, "interval_ms", v),
    "first_token_ms": lambda v: _number(float, "first_token_ms", v),
    "split": lambda v: _number(int, "split", v),
    "stamp": lambda v: _flag("stamp", v),
    "finish": lambda v: _choice("finish", v, ("stop", "length")),
    "usage": lambda v: _flag("usage", v),
    "tag": lambda v: v,
    "error": lambda v: _word("error", v),
    "beta": lambda v: _flag("beta", v),
    "fail_times": lambda v: _number(int, "fail_times", v),
    "fault": Fault.parse,
}
