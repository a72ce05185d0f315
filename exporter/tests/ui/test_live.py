"""Live updates: the in-process bus, the Redis bus (across "processes", through an outage) and the
server-sent event streams of a real ``tasktree serve``."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

from tasktree.exporter.live import LocalBus, RedisBus, decode_message, encode_message
from tasktree.exporter.ui.live import KEEPALIVE_S

from ..integration.faults_support import EventReader, RedisServer, free_port
from .support import send_spans, span

A, B = b"\xaa" * 16, b"\xbb" * 16
REDIS_URL = os.environ.get("TASKTREE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def test_run_subscription_wakes_for_its_run_only_and_list_subscription_for_any():
    bus = LocalBus()
    run_a, runs = bus.subscribe(A), bus.subscribe(None)
    bus.publish((B,))
    assert not run_a.wait(0.01) and runs.wait(0.01)
    bus.publish((A, B))
    assert run_a.wait(0.01) and not run_a.wait(0.01)  # one change, one wake-up


def test_streams_are_capped_and_closing_the_bus_ends_them():
    bus = LocalBus(max_streams=2)
    first, _second = bus.subscribe(A), bus.subscribe(A)
    assert bus.subscribe(A) is None
    bus.unsubscribe(first)
    assert bus.subscribe(None) is not None
    bus.close()
    assert _second.closed and not _second.wait(0.01) and bus.subscribe(A) is None


@pytest.mark.parametrize("ids", [frozenset({A}), frozenset({A, B}), None])
def test_channel_messages_round_trip_and_garbage_means_everything(ids):
    assert decode_message(encode_message(ids)) == ids
    assert decode_message(b"zz,not-hex") is None


# -- Redis ---------------------------------------------------------------------------------------


def _redis_or_skip(url: str = REDIS_URL) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is required under CI=true: {exc}")
        pytest.skip(f"no Redis at {url}")


def _started(bus: RedisBus) -> RedisBus:
    bus.start()
    assert bus.connected.wait(5), "the bus did not subscribe"
    return bus


def test_redis_bus_carries_one_process_changes_to_another():
    _redis_or_skip()
    channel = f"tasktree:test:{uuid.uuid4().hex}"
    one, two = (_started(RedisBus(REDIS_URL, channel=channel)) for _ in range(2))
    try:
        watching = two.subscribe(A)
        one.publish((A,))
        assert watching.wait(2.0)
    finally:
        one.close()
        two.close()


@pytest.fixture
def private_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_outage_delivers_locally_then_resyncs_everyone_when_redis_is_back(private_redis):
    bus = _started(RedisBus(private_redis.url))
    try:
        other_run = bus.subscribe(B)
        private_redis.stop()
        time.sleep(0.3)
        own = bus.subscribe(A)
        bus.publish((A,))
        assert own.wait(5.0), "own changes must still show while Redis is down"
        assert not other_run.wait(0.2)
        private_redis.start()
        assert other_run.wait(10.0), "after the outage every stream is told to re-fetch"
        assert bus.connected.is_set()
    finally:
        bus.close()


def test_redis_bus_says_again_while_redis_stays_down_and_when_it_is_back(caplog):
    """One warning at start-up was all an operator got: the pages then missed every other
    process's changes for good, in silence."""
    redis = RedisServer()  # its port is free: nothing listens there yet
    bus = RedisBus(redis.url, still_down_every_s=0.5).start()
    try:
        _wait_for_log(caplog, "live updates through Redis still paused after")
        assert not bus.up
        redis.start()
        assert bus.connected.wait(10)
        _wait_for_log(caplog, "live updates through Redis resumed after")
        assert bus.up
    finally:
        bus.close()
        redis.stop()


def _wait_for_log(caplog, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{caplog.text}"
        time.sleep(0.1)


# -- event streams through a real server ----------------------------------------------------------


def test_run_stream_says_changed_as_a_span_arrives_not_at_the_next_keepalive(tasktree_server):
    trace = os.urandom(16).hex()
    stream = EventReader(f"{tasktree_server.web}/api/live/runs/{trace}")
    try:
        assert stream.content_type.startswith("text/event-stream")
        assert stream.next_event(5) == "open"
        started = time.monotonic()
        send_spans(tasktree_server.otlp_http, [span(trace, os.urandom(8).hex(), name="t")])
        assert stream.next_event(KEEPALIVE_S) == "changed"
        latency = time.monotonic() - started
    finally:
        stream.close()
    print(f"changed {latency:.2f}s after the span was sent (keep-alives every {KEEPALIVE_S}s)")
    # An event held in a server buffer would come out with the next write, a keep-alive; well
    # before it, with room for a loaded machine, it was sent at once (typically ~0.1 s).
    assert latency < KEEPALIVE_S / 5, "the event waited in a server buffer"


def test_stream_of_a_malformed_run_id_is_400(tasktree_server):
    response = requests.get(f"{tasktree_server.web}/api/live/runs/nope", timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_two_servers_share_live_updates_through_redis(start_tasktree, private_db):
    # A database of their own: a server of another test (its updates in-process only) must not
    # fold this span in their place.
    _redis_or_skip()
    one = start_tasktree(extra_args=("--redis-url", REDIS_URL), database=private_db)
    two = start_tasktree(extra_args=("--redis-url", REDIS_URL), database=private_db)
    trace = os.urandom(16).hex()
    stream = EventReader(f"{two.web}/api/live/runs/{trace}")
    try:
        assert stream.next_event(5) == "open"
        send_spans(one.otlp_http, [span(trace, os.urandom(8).hex(), name="t")])
        assert stream.next_event(5) == "changed", "a fold in one process reaches the other's pages"
    finally:
        stream.close()


def test_with_redis_down_pages_work_and_own_changes_still_go_live(start_tasktree, private_db):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = start_tasktree(extra_args=("--redis-url", dead), database=private_db)  # see above
    assert requests.get(server.web + "/", timeout=10).status_code == 200
    trace = os.urandom(16).hex()
    stream = EventReader(f"{server.web}/api/live/runs/{trace}")
    try:
        assert stream.next_event(5) == "open"
        send_spans(server.otlp_http, [span(trace, os.urandom(8).hex(), name="t")])
        assert stream.next_event(5) == "changed"
    finally:
        stream.close()
