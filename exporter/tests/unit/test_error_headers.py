"""The headers every error answer carries (``errors.error_headers``): the API's, the pages' and
the OTLP receivers' answers say the same thing the same way."""

from __future__ import annotations

import pytest

from tasktree.exporter.errors import Overloaded, StoreUnavailable, Unauthorized, error_headers


@pytest.mark.parametrize(
    ("delay", "header"), [(0, "1"), (0.2, "1"), (1.0, "1"), (1.4, "2"), (2.5, "3"), (30, "30")]
)
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(delay, header):
    assert error_headers(Overloaded("full"), delay) == {"Retry-After": header}


def test_no_retry_after_when_the_client_must_not_retry():
    assert error_headers(StoreUnavailable("down"), None) == {}


def test_a_401_carries_the_bearer_challenge():
    assert error_headers(Unauthorized("sign in"), None) == {
        "WWW-Authenticate": 'Bearer realm="tasktree"'
    }
