"""How values look on the pages: durations, rollups, attribute values.  Pure functions, no I/O.

``static/tasktree.js`` formats the same way for what it renders (keep the two in step).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

LONG_VALUE_CHARS = 240
"""Values longer than this (or of more than ``LONG_VALUE_LINES`` lines) are shown folded."""
LONG_VALUE_LINES = 4
ENV_PREFIX = "process.environment_variable."
"""Resource attributes of captured environment variables (tasktree.instrumentation)."""
ROLLUP_ORDER = ("ok", "error", "running", "stalled")


def duration(seconds: float | None) -> str:
    """``0.0123`` → ``"12.3 ms"``; ``75`` → ``"1m 15s"``; None → ``""`` (not ended)."""
    if seconds is None:
        return ""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"


def rollup(counts: dict[str, int]) -> list[tuple[str, str]]:
    """Non-zero counts as (status, ``"3,998 ok"``) pairs in a fixed order; [] for none."""
    return [(name, f"{counts[name]:,} {name}") for name in ROLLUP_ORDER if counts.get(name)]


def shown(value: Any) -> str:
    """An attribute value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    nested = isinstance(value, dict | list)
    return json.dumps(value, ensure_ascii=False, indent=2 if nested else None)


def is_long(text: str) -> bool:
    """Whether a value is shown folded (whole, inside a ``<details>``)."""
    return len(text) > LONG_VALUE_CHARS or text.count("\n") >= LONG_VALUE_LINES


def first_line(text: str, limit: int = 120) -> str:
    """The summary of a folded value: its first line, cut at ``limit`` characters."""
    line = text.split("\n", 1)[0]
    return line if len(line) <= limit else line[:limit] + "…"


def split_resource(resource: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resource attributes, captured environment by variable name), each sorted by key."""
    plain, env = {}, {}
    attributes = resource or {}
    for key in sorted(attributes):
        if key.startswith(ENV_PREFIX):
            env[key.removeprefix(ENV_PREFIX)] = attributes[key]
        else:
            plain[key] = attributes[key]
    return plain, env


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    """``mapping`` less ``key`` (a value already shown on its own, like a stack trace)."""
    return {k: v for k, v in mapping.items() if k != key}


FILTERS: dict[str, Callable[..., Any]] = {
    "duration": duration,
    "rollup": rollup,
    "shown": shown,
    "is_long": is_long,
    "first_line": first_line,
    "without": without,
}
"""Registered as Jinja filters by the blueprint."""
