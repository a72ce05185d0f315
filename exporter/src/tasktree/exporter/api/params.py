"""JSON API request parameters: parsed and validated, or ``BadRequest`` saying what is expected.

Pure functions over strings (no Flask, no database).  An absent parameter is ``None``; an empty
``q`` or ``job`` counts as absent (a search box left blank), while an empty ``limit``, ``status``,
``from``, ``to`` or ``cursor`` is a malformed value like any other.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tasktree.exporter.errors import BadRequest
from tasktree.exporter.receiver.records import MAX_NAME_BYTES
from tasktree.exporter.store.queries import SPAN_ID_BYTES, TRACE_ID_BYTES
from tasktree.exporter.tree import status as task_status

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT = 256
"""Longest ``q`` accepted, in characters."""
MAX_JOB = MAX_NAME_BYTES + 100
"""Longest ``job`` accepted, in characters: any job name as stored (cut at ``MAX_NAME_BYTES``
bytes, then marked), so that every job can be listed."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)", re.ASCII
)
_UNIX_SECONDS = re.compile(r"(-?)(\d{1,11})(?:\.(\d{1,9})\d*)?", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,7}", re.ASCII)
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,512}", re.ASCII)
_BAD_CURSOR = "cursor is not valid: pass back a next_cursor of this list unchanged"

# Cursor layouts per list: the stored key, in order; "start?" may be null (placeholders).
CURSOR_KEYS = {
    "runs": ("start?", TRACE_ID_BYTES),
    "roots": ("start?", SPAN_ID_BYTES),
    "children": ("start", SPAN_ID_BYTES),
    "subtree": ("start", SPAN_ID_BYTES),
    "failures": ("start", SPAN_ID_BYTES),  # the run page's "next failure" (oldest first)
    "search": ("start?", TRACE_ID_BYTES, SPAN_ID_BYTES),
}


def hex_id(value: str, size: int, what: str) -> bytes:
    """A trace id (``size`` 16) or span id (8) from its hex form, either case."""
    if len(value) != 2 * size or not re.fullmatch(r"[0-9a-fA-F]+", value, re.ASCII):
        raise BadRequest(f"{what} must be {2 * size} hexadecimal digits ({size} bytes)")
    return bytes.fromhex(value)


def trace_id(value: str) -> bytes:
    return hex_id(value, TRACE_ID_BYTES, "trace id")


def span_id(value: str) -> bytes:
    return hex_id(value, SPAN_ID_BYTES, "span id")


def limit(value: str | None, default: int = DEFAULT_LIMIT) -> int:
    """Page size: an integer from 1 to ``MAX_LIMIT``; ``default`` when absent."""
    if value is None:
        return default
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def status(value: str | None) -> int | None:
    """A status name (``tree.status``) as its stored code."""
    if value is None:
        return None
    if value not in task_status.CODES:
        raise BadRequest("status must be one of: " + ", ".join(task_status.CODES))
    return task_status.CODES[value]


def listed_status(value: str | None) -> int:
    """The status a subtree's tasks are listed by: required, one of ``tree.status.FLAGGED``."""
    names = [task_status.name(code) for code in task_status.FLAGGED]
    if value not in names:
        raise BadRequest(
            "status must be one of: " + ", ".join(names) + " (a subtree lists the tasks that"
            " are running, stalled or failed; its ok tasks are its children, in the tree)"
        )
    return task_status.CODES[value]


def text(value: str | None, name: str, longest: int = MAX_TEXT) -> str | None:
    """Free text (``q``, ``job``): blank is absent; at most ``longest`` characters, no NUL."""
    if value is None or value.strip() == "":
        return None
    if len(value) > longest or "\x00" in value:
        raise BadRequest(f"{name} must be at most {longest} characters, without NUL")
    return value


def filters(args: Mapping[str, str]) -> dict[str, Any]:
    """The job, status and start-time range of a query string, validated (``queries`` names)."""
    return {
        "job": text(args.get("job"), "job", MAX_JOB),
        "status": status(args.get("status")),
        "from_ns": timestamp(args.get("from"), "from"),
        "to_ns": timestamp(args.get("to"), "to"),
    }


def timestamp(value: str | None, name: str) -> int | None:
    """A time as Unix nanoseconds, from RFC 3339 (any offset, any fraction) or Unix seconds.

    The fraction's digits beyond nanoseconds are cut.  The accepted forms are exactly the
    ``from``/``to`` pattern of ``openapi.json`` (plus calendar checks: no February 30th).
    """
    if value is None:
        return None
    ns = _rfc3339_ns(value) if "-" in value[1:] else _unix_seconds_ns(value)
    if ns is None:
        raise BadRequest(
            f"{name} must be an RFC 3339 date-time (e.g. 2026-11-26T17:33:26.5Z) or Unix seconds"
        )
    # Beyond what int64 nanoseconds hold (years 1678 to 2261) nothing is stored: clamping keeps
    # the meaning ("to=9999-12-31T00:00:00Z" is "no upper bound") and the bigint comparison.
    return min(max(ns, INT64_MIN), INT64_MAX)


def _rfc3339_ns(value: str) -> int | None:
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    *fields, fraction, offset = match.groups()
    year, month, day, hour, minute, second = map(int, fields)
    try:
        tz = UTC if offset in "Zz" else _offset(offset)
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:  # month 13, hour 24, offset beyond a day, ...
        return None
    delta = moment - _EPOCH  # days and seconds are exact; microseconds are 0
    return (delta.days * 86_400 + delta.seconds) * 10**9 + _nanos(fraction)


def _offset(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _unix_seconds_ns(value: str) -> int | None:
    match = _UNIX_SECONDS.fullmatch(value)
    if match is None:
        return None
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 10**9 + _nanos(fraction)
    return -ns if sign else ns


def _nanos(fraction: str | None) -> int:
    """Digits after the decimal point as nanoseconds (beyond nine digits: cut, not rounded)."""
    return int((fraction or "")[:9].ljust(9, "0"))


# ---------------------------------------------------------------------------------------------
# Cursors: urlsafe base64 (unpadded) of the JSON list [list name, key...], ids as hex.


def encode_cursor(kind: str, key: tuple | None) -> str | None:
    """The opaque ``next_cursor`` for a keyset key (``None``: no next page)."""
    if key is None:
        return None
    parts = [part.hex() if isinstance(part, bytes) else part for part in key]
    raw = json.dumps([kind, *parts], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, value: str | None) -> tuple | None:
    """The keyset key inside a cursor this API issued for list ``kind``; anything else: 400."""
    if value is None:
        return None
    try:
        parts = _cursor_parts(value)
        if parts[0] != kind or len(parts) != len(CURSOR_KEYS[kind]) + 1:
            raise ValueError("issued for another list")
        layouts = CURSOR_KEYS[kind]
        return tuple(_key_part(p, layout) for p, layout in zip(parts[1:], layouts, strict=True))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise BadRequest(_BAD_CURSOR) from exc


def _cursor_parts(value: str) -> list:
    if not _CURSOR.fullmatch(value):
        raise ValueError("not urlsafe base64")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
    parts = json.loads(raw)  # ValueError (JSONDecodeError, UnicodeDecodeError) if not JSON
    if not isinstance(parts, list) or not parts:
        raise ValueError("not a list")
    return parts


def _key_part(part: object, layout: str | int) -> int | bytes | None:
    """One key part: a start time (int64 ns; null where allowed) or a hex id of ``layout`` bytes."""
    if isinstance(layout, int):
        if not isinstance(part, str) or len(part) != 2 * layout or part != part.lower():
            raise ValueError("bad id")
        return bytes.fromhex(part)
    if part is None and layout == "start?":
        return None
    if type(part) is not int or not INT64_MIN <= part <= INT64_MAX:
        raise ValueError("bad start")
    return part
