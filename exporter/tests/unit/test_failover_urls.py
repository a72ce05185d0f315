"""The URLs the pools connect with (issue 17): a multi-host URL writes to the server that accepts
writes and reads from a standby first, unless it says otherwise; every URL gets the timeouts that
end waits on a dead server, unless it sets its own."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from tasktree.exporter.store.pool import primary_conninfo, standby_conninfo

MULTI = "postgresql://tasktree@db1:5432,db2:5432/tasktree"


@pytest.mark.parametrize(
    ("make", "expected"), [(primary_conninfo, "read-write"), (standby_conninfo, "prefer-standby")]
)
def test_a_multi_host_url_without_target_session_attrs_gets_the_pools_own(make, expected):
    params = conninfo_to_dict(make(MULTI))
    assert params["target_session_attrs"] == expected
    assert (params["host"], params["port"]) == ("db1,db2", "5432,5432")


@pytest.mark.parametrize("make", [primary_conninfo, standby_conninfo])
def test_what_the_url_says_wins(make):
    url = MULTI + "?target_session_attrs=any&connect_timeout=2&keepalives_idle=60"
    params = conninfo_to_dict(make(url))
    assert (params["target_session_attrs"], params["connect_timeout"]) == ("any", "2")
    assert params["keepalives_idle"] == "60"


def test_a_single_host_gets_timeouts_but_no_target_session_attrs():
    params = conninfo_to_dict(primary_conninfo("postgresql://tasktree@db1/tasktree"))
    assert "target_session_attrs" not in params
    assert (params["connect_timeout"], params["tcp_user_timeout"]) == ("5", "15000")


def test_a_unix_socket_gets_a_connect_timeout_only():
    params = conninfo_to_dict(primary_conninfo("host=/var/run/postgresql dbname=tasktree"))
    assert params["connect_timeout"] == "5" and "keepalives_idle" not in params
