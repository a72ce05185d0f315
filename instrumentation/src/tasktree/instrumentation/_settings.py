"""Reading settings: argument → environment variable → default, never failing a job."""

from __future__ import annotations

import logging
import os

_logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


_MOST_SECONDS = 86_400.0  # a day: more than that is a typo, and 1e300 overflows a timeout


def positive_float(
    value: float | None, env_name: str, default: float, *, allow_zero=False
) -> float:
    """Seconds: ``value`` if given, else the environment variable, else ``default``; a bad value
    (not a number, negative, infinite or over a day) warns and gives the default."""
    raw: object = value
    if value is None:
        raw = os.environ.get(env_name, "").strip()
        if not raw:
            return default
    try:
        parsed = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        parsed = -1.0
    if (0 < parsed <= _MOST_SECONDS) or (allow_zero and parsed == 0):
        return parsed
    where = env_name if value is None else f"the argument for {env_name}"
    _logger.warning(
        "tasktree: ignoring %s=%r (not a number of seconds from %s to %.0f); using %s",
        where, raw, 0 if allow_zero else "above 0", _MOST_SECONDS, default,
    )  # fmt: skip
    return default


def positive_int(env_name: str, default: int) -> int:
    """A positive integer from the environment, else ``default``; a bad value warns."""
    raw = os.environ.get(env_name, "").strip()
    if not raw:
        return default
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    _logger.warning(
        "tasktree: ignoring %s=%r (not a positive integer); using %s", env_name, raw, default
    )
    return default


def flag(value: bool | None, env_name: str, default: bool) -> bool:
    """A boolean from the argument, else the environment (true/false/1/0/yes/no), else default."""
    if value is not None:
        return bool(value)
    raw = os.environ.get(env_name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    if raw:
        _logger.warning(
            "tasktree: ignoring %s=%r (not true/false); using %s", env_name, raw, default
        )
    return default


def patterns(value: str | list[str] | tuple[str, ...] | None, env_name: str) -> list[str]:
    """Comma-separated patterns from the argument (string or list) or the environment variable."""
    if value is None:
        value = os.environ.get(env_name, "")
    if isinstance(value, str):
        value = value.split(",")
    return [item.strip() for item in value if item and item.strip()]
