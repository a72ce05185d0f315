"""The keyword search's notion of a word, shared by what ingest stores and what a search asks.

A task's search document is the set of words of its name, its status message and its attributes
(keys and values).  A word is a run of characters other than ASCII punctuation and spaces,
lower-cased, so "disk_full", "db-3" and "host.name" are two words each.  A search matches the
tasks holding, for each of its words, a word that starts with it.

Words are found here, in Python, rather than by PostgreSQL's text-search parser: the parser cost
about 10 µs a span, more than writing the rest of the task; this costs under 1 µs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

_ASCII_SEPARATORS = bytes(c for c in range(128) if not chr(c).isalnum())
_TO_SPACES = bytes.maketrans(_ASCII_SEPARATORS, b" " * len(_ASCII_SEPARATORS))
MAX_TEXT = 100_000  # characters of a document that are read (a tsvector cannot exceed 1 MB)
MAX_WORD = 100  # bytes kept of a word: longer words match by their beginning
# A word longer than MAX_WORD: found by one C-level scan; most documents have none, and splitting
# every document into words to look was 2 µs of the receiver's ~18 µs a span.
_LONG_WORD = re.compile(rb"[^ ]{%d}" % (MAX_WORD + 1))


def document_words(text: str) -> str:
    """The words of ``text``, separated by one or more spaces, as stored."""
    raw = text[:MAX_TEXT].lower().encode("utf-8", "replace").translate(_TO_SPACES)
    if len(raw) > MAX_WORD and _LONG_WORD.search(raw):
        raw = b" ".join(word[:MAX_WORD] for word in raw.split())
    return raw.decode("utf-8", "ignore")  # a cut may have split a character


def task_words(name: str, message: str, attributes: Mapping[str, Any], attributes_json: str) -> str:
    """The stored words of a task: of its name, status message and attributes (keys and values).

    Past ``MAX_TEXT`` characters in all, each part gets its share instead of the first parts
    taking all of it: the name and message a quarter each at most, every key, then an equal
    share of what is left for each value, so that one large value (a captured output) does not
    hide the task's other attributes from a search."""
    if len(name) + len(message) + len(attributes_json) < MAX_TEXT:
        return document_words(f"{name} {message} {attributes_json}")
    parts = [name[: MAX_TEXT // 4], message[: MAX_TEXT // 4], *attributes]
    left = MAX_TEXT - sum(map(len, parts))
    share = max(MAX_WORD, left // max(1, len(attributes)))
    for value in attributes.values():
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        parts.append(text[:share])
    return document_words(" ".join(parts))


def query_words(text: str) -> list[str]:
    """The words a search for ``text`` looks for, each as the beginning of a stored word.
    Split at ASCII spaces only, as stored words are (``str.split()`` would split a word at a
    non-breaking space, which stays inside a stored word)."""
    return list(dict.fromkeys(word for word in document_words(text).split(" ") if word))


def query(text: str) -> str | None:
    """The ``tsquery`` matching tasks that hold a word starting with each word of ``text``;
    ``None`` when ``text`` has no words (then nothing matches)."""
    words = query_words(text)
    if not words:
        return None
    return " & ".join(f"'{word}':*" for word in words)
