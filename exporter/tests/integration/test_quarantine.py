"""A record that cannot be folded is set aside, with why, and stops nothing else
(``store/quarantine.py``); ``tasktree quarantine`` lists, requeues or discards what was."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import psycopg
import requests

from tasktree.exporter.ingest import Ingestor
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import quarantine
from tasktree.exporter.store.fold import lanes_with_records
from tasktree.exporter.tree import fold as tree_fold

from ..spans import sid, span
from .faults_support import otlp_request
from .fold_support import tree

# A constraint a site gave its database, which refuses one task's row: PostgreSQL's own fault,
# met by a fold for real.
_REFUSE_POISON = "ALTER TABLE tasks ADD CONSTRAINT no_poison CHECK (name <> 'poison')"
_ALLOW_POISON = "ALTER TABLE tasks DROP CONSTRAINT no_poison"



def _fold_all(pool, expected_done: int, **kw):
    """Run a Folder until ``expected_done`` records are folded or set aside and the landing is
    empty; returns the Folder (stopped)."""
    from tasktree.exporter.background import Folder

    folder = Folder(pool, dataclasses.replace(Settings(), pool_size=4, **kw))
    folder.start()
    try:
        deadline = time.monotonic() + 30
        with pool.connection() as conn:
            while lanes_with_records(conn) or folder.folded_total < expected_done:
                assert time.monotonic() < deadline, f"folded {folder.folded_total}"
                time.sleep(0.05)
    finally:
        folder.stop()
    return folder


def _runs_in_two_lanes(tag: int) -> list[bytes]:
    """Three runs: two in lane 1 (the poisoned run and its neighbour), one in lane 2."""
    return [bytes([1, tag, n]) + bytes(13) for n in range(2)] + [bytes([2, tag]) + bytes(14)]


def _requests_with_one_task(runs: list[bytes], name: str) -> list[DecodedBatch]:
    """Each run a root with 12 children, in requests of 13 tasks; the first run's 7th child is
    named ``name``."""
    requests_ = []
    for t in runs:
        spans = [span(t, sid(0), None, name="root")]
        spans += [span(t, sid(k), sid(0), name="work") for k in range(1, 13)]
        if t == runs[0]:
            spans[7] = dataclasses.replace(spans[7], name=name)
        requests_.append(DecodedBatch(spans))
    return requests_


def test_a_record_postgresql_refuses_is_set_aside_and_the_rest_of_its_lane_folds(
    pool, clean_store_db
):
    runs = _runs_in_two_lanes(1)
    ingest = Ingestor(pool, dataclasses.replace(Settings()))
    for request in _requests_with_one_task(runs, "poison"):
        ingest(request)
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        conn.execute(_REFUSE_POISON)
        folder = _fold_all(pool, 3 * 13 - 1, fold_threads=1, fold_batch=8)
        assert folder.folded_total == 3 * 13 - 1
        poisoned = tree(conn, runs[0])
        assert sid(7) not in poisoned and poisoned[sid(0)][3] == 11  # its 11 other children
        for t in runs[1:]:
            assert tree(conn, t)[sid(0)][3] == 12
        [group] = quarantine.by_error(conn)
        assert (group.records, group.runs, group.example_trace_id) == (1, 1, runs[0].hex())
        assert "no_poison" in group.error

        conn.execute(_ALLOW_POISON)  # the cause fixed: requeued, it folds like any record
        assert quarantine.requeue(conn) == 1
        _fold_all(pool, 1, fold_threads=1)
        assert tree(conn, runs[0])[sid(7)][0] == sid(0)
        assert tree(conn, runs[0])[sid(0)][3] == 12
        assert quarantine.by_error(conn) == []


def test_many_bad_records_are_set_aside_one_after_another_and_listed_as_one_cause(
    pool, clean_store_db, monkeypatch
):
    """Each record set aside used to end the pass as if the lane were empty: 200 bad records
    kept the good runs behind them in their lane waiting 100 s.  Here a pass that stopped would
    wait an hour for a doorbell that never rings."""
    from tasktree.exporter import background

    monkeypatch.setattr(background, "_IDLE_WAIT_S", 3600.0)
    bad = [bytes([3, 7, n]) + bytes(13) for n in range(12)]  # one lane, landed first
    good = bytes([3, 8]) + bytes(14)
    ingest = Ingestor(pool, dataclasses.replace(Settings()))
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        conn.execute(_REFUSE_POISON)
        for t in bad:
            ingest(DecodedBatch([span(t, sid(0), None, name="poison")]))
        ingest(DecodedBatch([span(good, sid(0), None), span(good, sid(1), sid(0))]))
        _fold_all(pool, 2, fold_threads=1, fold_batch=4)
        assert tree(conn, good)[sid(0)][3] == 1
        [group] = quarantine.by_error(conn)  # one cause: one group, the row not quoted
        assert (group.records, group.runs) == (12, 12)
        assert "no_poison" in group.error and "Failing row" not in group.error


def test_a_record_tasktrees_own_rules_fail_on_is_set_aside_and_the_folder_goes_on(
    pool, clean_store_db, monkeypatch
):
    """A fault of tasktree's code on one record stopped the folder thread for good (it raised
    out of it): now the record is set aside, asking for a report, and folding goes on."""
    runs = _runs_in_two_lanes(2)
    ingest = Ingestor(pool, dataclasses.replace(Settings()))
    for t in runs:  # the children first: the roots' records then meet the tree rules
        ingest(DecodedBatch([span(t, sid(k), sid(0), name="work") for k in range(1, 13)]))
    _fold_all(pool, 3 * 12, fold_threads=1)
    apply = tree_fold.RunFold.apply

    def failing_on_bad(self, record):
        if record.name == "bad":
            raise ValueError("a rule failed")
        return apply(self, record)

    monkeypatch.setattr(tree_fold.RunFold, "apply", failing_on_bad)
    ingest(DecodedBatch([span(t, sid(0), None, name="bad" if t == runs[0] else "root")
                         for t in runs]))  # fmt: skip
    folder = _fold_all(pool, 2, fold_threads=1)
    assert folder.folded_total == 2
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        assert tree(conn, runs[0])[sid(0)][1:5] == (True, 0, 12, 12)  # still a placeholder
        assert [tree(conn, t)[sid(0)][1] for t in runs[1:]] == [False, False]
        [group] = quarantine.by_error(conn)
        assert group.error == "ValueError: a rule failed (a fault of tasktree's: please report it)"
        monkeypatch.undo()  # the fault fixed: requeued, the root takes its place
        assert quarantine.requeue(conn) == 1
        _fold_all(pool, 1, fold_threads=1)
        assert tree(conn, runs[0])[sid(0)][1:3] == (False, 3)


def _tasktree(*args: str, database: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", *args, "--database-url", database],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _quarantined_gauge(server) -> float:
    for line in requests.get(server.web + "/metrics", timeout=30).text.splitlines():
        if line.startswith("tasktree_quarantined_spans "):
            return float(line.split()[1])
    raise AssertionError("no tasktree_quarantined_spans on /metrics")


def _wait_for_gauge(server, value: float) -> None:
    deadline = time.monotonic() + 15  # the store's metrics are cached for a second
    while _quarantined_gauge(server) != value:
        assert time.monotonic() < deadline, f"tasktree_quarantined_spans never {value}"
        time.sleep(0.2)


def test_an_operator_sees_set_aside_spans_on_metrics_and_requeues_them(
    start_tasktree, private_db
):
    server = start_tasktree(database=private_db)
    assert _tasktree("quarantine", database=private_db).startswith("No spans are set aside in ")
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute(_REFUSE_POISON)
    trace = os.urandom(16)
    root, work, bad = sid(1), sid(2), sid(3)
    body = otlp_request(trace, [(root, None, "root", False), (work, root, "work", False),
                                (bad, root, "poison", False)], "nightly")  # fmt: skip
    answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                           headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    server.wait_folded()
    assert server.get(f"/api/runs/{trace.hex()}")["task_count"] == 2
    _wait_for_gauge(server, 1)
    listing = _tasktree("quarantine", database=private_db)
    assert "1 span(s) of 1 run(s)" in listing and trace.hex() in listing
    assert "no_poison" in listing and "--requeue" in listing

    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute(_ALLOW_POISON)
    assert _tasktree("quarantine", "--requeue", database=private_db).startswith("1 span(s)")
    server.wait_folded()
    assert server.get(f"/api/runs/{trace.hex()}")["task_count"] == 3
    _wait_for_gauge(server, 0)


def test_an_operator_can_discard_set_aside_spans(start_tasktree, private_db):
    server = start_tasktree(database=private_db)
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute(_REFUSE_POISON)
    body = otlp_request(os.urandom(16), [(sid(1), None, "poison", False)], "nightly")
    headers = {"Content-Type": "application/x-protobuf"}
    requests.post(server.otlp_http + "/v1/traces", data=body, headers=headers, timeout=30)
    server.wait_folded()
    _wait_for_gauge(server, 1)
    assert _tasktree("quarantine", "--discard", database=private_db).startswith(
        "1 span(s) deleted from "
    )
    _wait_for_gauge(server, 0)
    assert _tasktree("quarantine", database=private_db).startswith("No spans are set aside in ")


def test_listing_a_database_no_tasktree_has_served_says_so_and_changes_nothing(empty_database):
    """A listing must not migrate: under older servers still running that changed their search,
    and a read-only role could not list at all (a traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", "quarantine", "--database-url", empty_database],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "has no span_quarantine table" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
