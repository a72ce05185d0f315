"""The keyword search's words (search.py): what ingest stores for a task, and what a search asks."""

from __future__ import annotations

import orjson
import pytest

from tasktree.exporter.search import (
    MAX_TEXT,
    MAX_WORD,
    document_words,
    query,
    query_words,
    task_words,
)


def test_words_are_lowercased_runs_between_ascii_punctuation_and_spaces():
    assert document_words('Disk_Full on db-3 {"host.name":"Box"}').split() == [
        "disk", "full", "on", "db", "3", "host", "name", "box",
    ]


@pytest.mark.parametrize("prefix", ["", "short words before it ", "x" * MAX_WORD + " "])
def test_a_word_longer_than_the_limit_keeps_its_beginning(prefix):
    long_word = "a" * (MAX_WORD + 50)
    words = document_words(f"{prefix}{long_word} tail").split()
    assert words[-2:] == ["a" * MAX_WORD, "tail"]
    assert all(len(w.encode()) <= MAX_WORD for w in words)


def test_a_cut_inside_a_multibyte_character_drops_the_partial_character():
    word = "é" * MAX_WORD  # 2 bytes each: the cut at MAX_WORD bytes falls between characters
    assert document_words(word).split() == ["é" * (MAX_WORD // 2)]
    odd = "x" + "é" * MAX_WORD  # the cut falls inside a character
    (kept,) = document_words(odd).split()
    assert kept == "x" + "é" * ((MAX_WORD - 1) // 2)


def test_long_text_made_of_short_words_is_kept_whole():
    text = " ".join(f"w{i}" for i in range(200))
    assert document_words(text).split() == text.split()


def test_a_query_matches_each_word_as_a_prefix():
    assert query_words("Disk full disk") == ["disk", "full"]
    assert query("Disk-full") == "'disk':* & 'full':*"
    assert query("...") is None


def test_a_word_holding_a_non_ascii_space_is_found_by_its_whole_text():
    """Stored words are split at ASCII punctuation and spaces only: "disk\u00a0quota" is one
    word, and a search for that text must look for that one word."""
    stored = document_words("disk\u00a0quota exceeded").split(" ")
    assert stored == ["disk\u00a0quota", "exceeded"]
    assert query_words("Disk\u00a0Quota") == ["disk\u00a0quota"]
    assert query("disk\u2003quota") == "'disk\u2003quota':*"


def test_one_large_value_does_not_hide_the_other_attributes_from_a_search():
    attributes = {
        "output": "line of captured output " * 15_000,  # 360,000 characters
        "float": 0.5,
        "ключ": "значение",
        "size": "medium",
        "ints": [31337, 42],
        "nested": {"region": "eu-north"},
    }
    text = orjson.dumps(attributes).decode()
    words = set(task_words("load", "disk_full", attributes, text).split())
    expected = "load disk full output captured float 0 5 ключ значение medium ints 31337 42 nested"
    for word in (*expected.split(), "region", "eu", "north"):
        assert word in words, word


def test_a_task_under_the_limit_keeps_every_word_as_before():
    attributes = {"path": "/data/in.csv", "rows": 12}
    text = orjson.dumps(attributes).decode()
    assert task_words("load", "ok", attributes, text) == document_words(f"load ok {text}")
    assert len(task_words("x" * MAX_TEXT, "", {"k": "v"}, '{"k":"v"}')) <= MAX_TEXT
