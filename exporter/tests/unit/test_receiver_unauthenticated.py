"""The warning about exports refused for their token: once a minute per address, bounded memory."""

from __future__ import annotations

import logging

from tasktree.exporter.errors import Unauthorized
from tasktree.exporter.receiver._common import RefusedExports


def test_each_address_is_warned_about_once_a_minute_and_few_addresses_are_remembered(caplog):
    now = [1000.0]
    counted = []
    exports = RefusedExports(lambda protocol, outcome: counted.append((protocol, outcome)),
                             interval_s=60, capacity=2, clock=lambda: now[0])
    refused = Unauthorized("the bearer token matches no ingest token")

    def warned_about(*addresses: str, protocol: str = "grpc") -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for address in addresses:
                exports.unauthenticated(protocol, address, refused)
        return [r.getMessage() for r in caplog.records]

    first = warned_about("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", protocol="http")
    assert first == [
        "refused an OTLP/HTTP export from 10.0.0.1: the bearer token matches no ingest token; "
        "warning at most once every 60 s per address",
        "refused an OTLP/HTTP export from 10.0.0.2: the bearer token matches no ingest token; "
        "warning at most once every 60 s per address",
    ]
    # A third address makes it forget the first (the least recently warned about): warned again.
    assert len(warned_about("10.0.0.3", "10.0.0.1", "10.0.0.3")) == 2
    now[0] += 61
    later = warned_about("10.0.0.3")
    assert len(later) == 1 and "(1 more refused since the last warning)" in later[0]
    # every refusal is counted, warned or not
    assert counted == [("http", "unauthenticated")] * 4 + [("grpc", "unauthenticated")] * 4
