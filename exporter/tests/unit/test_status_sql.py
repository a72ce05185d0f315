"""Status codes have one home (``tree.status.Status``): SQL that needs them is written from it."""

from __future__ import annotations

import re
from pathlib import Path

from tasktree.exporter.store import fold
from tasktree.exporter.store.locks import LANES
from tasktree.exporter.tree import status as st

_SRC = Path(fold.__file__).parents[1]  # tasktree/exporter
# Files that hold SQL; metrics.py and live.py are checked by their own tests.
_SQL_SOURCES = [
    "store/fold.py",
    "store/partitions.py",
    "store/queries.py",
    "store/queries.sql",
    "store/landing.py",
    "ingest.py",
    "search.py",
    "docker/audit.py",
    "api/routes.py",
    "api/params.py",
]
_BARE_STATUS = re.compile(
    r"status\s*(?:=|<>|!=|IN\s*\()\s*\d|THEN\s+\d\s+ELSE\s+\d|refused_reason\s*=\s*\d", re.I
)


def test_no_bare_status_numbers_in_sql() -> None:
    found = [
        f"{name}: {match.group(0)}"
        for name in _SQL_SOURCES
        for match in _BARE_STATUS.finditer((_SRC / name).read_text())
    ]
    assert found == []


def test_severity_orders_roots_worst_first_and_maps_back() -> None:
    severity = {
        int(code): int(rank) for code, rank in re.findall(r"WHEN (\d+) THEN (\d+)", fold._SEVERITY)
    }
    assert sorted(severity, key=severity.get, reverse=True) == [int(c) for c in st.WORST_FIRST]
    back = [int(c) for c in re.findall(r"\d+", fold._STATUS_OF_SEVERITY)]
    assert {code: back[rank - 1] for code, rank in severity.items()} == {c: c for c in severity}


def test_counts_follow_the_counted_order() -> None:
    counted = re.findall(r"FILTER \(WHERE status = (\d)\)", fold._LEAF_GROUPS_UNDER_PARENTS)
    assert counted == [str(int(code)) for code in st.COUNTED]


def test_status_names_round_trip() -> None:
    assert {st.name(code) for code in st.Status} == {*st.CODES, "missing"}
    assert all(st.name(int(code)) == label for label, code in st.CODES.items())


def test_fold_lane_formula_is_the_lane_index() -> None:
    """The claim of one lane must match the index span_landing_lane (migration 0007) exactly."""
    migration = (_SRC / "store/migrations/0007_fold_lanes.sql").read_text()
    assert f"(({fold._LANE_OF}), id)" in migration
    assert fold._LANE_OF == f"get_byte(trace_id, 0) % {LANES}"
