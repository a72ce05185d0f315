"""Live updates: "these runs changed", from the folder to every open page.

The folder calls ``LiveBus.publish(trace_ids)`` after each commit that changed runs.  A page holds
one event stream (``GET /api/live/runs`` for the runs list, ``GET /api/live/runs/<trace_id>`` for
one run: ``ui/live.py``) and, on each ``changed`` event, re-fetches what it shows through the JSON
API.  Events carry no tree data, so nothing on a page can go backwards: the store never regresses
a final status, and a page only ever shows what the store answered last.

Three buses with one interface:

* ``LocalBus``: in-process fan-out (the default, one ``tasktree serve`` process);
* ``RedisBus``: publishes to a Redis channel and fans out what it hears there, so every process
  serving the web UI sees every process's folds (``settings.redis_url``).  While Redis is down,
  a process still delivers its own changes locally; when Redis is back, every open stream is told
  "everything changed" once, since events may have been missed meanwhile;
* ``PostgresBus``: the same through PostgreSQL LISTEN/NOTIFY, for several processes on one
  database without Redis (``tasktree serve --workers N``).

Streams hold a server thread each, so their number is capped (``max_streams``); beyond it the
stream answers 503 and the page falls back to polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import psycopg

from tasktree.exporter.ui.format import duration

logger = logging.getLogger(__name__)

CHANNEL = "tasktree:live:runs"
"""The Redis pub/sub channel; a message is comma-separated hex trace ids, or ``*`` for all runs."""
MAX_STREAMS = 32
"""Open event streams per process (each holds one web server thread)."""
STILL_DOWN_EVERY_S = 60.0
"""How often a process says again that live updates through Redis are still paused."""
_MAX_IDS_PER_MESSAGE = 1000
_EVERYTHING = None  # "all runs changed" in deliver(): after an outage, or a message too long


class Subscription:
    """What one event stream waits on: changes of one run (``trace_id``) or of any run (None)."""

    def __init__(self, trace_id: bytes | None):
        self.trace_id = trace_id
        self._changed = threading.Event()
        self.closed = False

    def offer(self, trace_ids: frozenset[bytes] | None) -> None:
        """Wake the stream if ``trace_ids`` concern it (None: every run).  Never blocks."""
        if trace_ids is None or self.trace_id is None or self.trace_id in trace_ids:
            self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def wait(self, timeout: float) -> bool:
        """True when something changed since the last call; False after ``timeout`` seconds.

        A change offered after this returns is kept for the next call, so none is lost; the
        caller re-reads the store after this returns, which covers what was committed before.
        """
        if not self._changed.wait(timeout):
            return False
        self._changed.clear()
        return not self.closed


class LocalBus:
    """In-process fan-out from the folder thread to the streams of this process."""

    def __init__(self, max_streams: int = MAX_STREAMS):
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self.closed = False

    def subscribe(self, trace_id: bytes | None) -> Subscription | None:
        """A new subscription, or None when ``max_streams`` are open already (or closed)."""
        with self._lock:
            if self.closed or len(self._subscriptions) >= self.max_streams:
                return None
            subscription = Subscription(trace_id)
            self._subscriptions.add(subscription)
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def publish(self, trace_ids: Iterable[bytes]) -> None:
        """Folder listener: runs on the folder thread after a commit; quick, never raises."""
        self.deliver(frozenset(trace_ids))

    def deliver(self, trace_ids: frozenset[bytes] | None) -> None:
        """Wake the streams concerned by ``trace_ids`` (None: all of them)."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.offer(trace_ids)

    @property
    def up(self) -> bool:
        """Whether this process's pages hear of every process's changes now (/metrics:
        ``tasktree_live_bus_up``); in-process, there is no other process to hear."""
        return True

    def start(self) -> LocalBus:
        return self

    def close(self) -> None:
        """End every open stream (server shutdown)."""
        with self._lock:
            self.closed = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()


class RedisBus(LocalBus):
    """Fan-out through Redis pub/sub, for several processes serving the same pages.

    ``publish`` only records the ids (the folder thread never waits on Redis); a publisher thread
    sends them, and a listener thread delivers every message heard on ``CHANNEL`` to this
    process's streams, reconnecting with back-off while Redis is down (and saying so again every
    ``still_down_every_s``, and when it is back).
    """

    def __init__(
        self,
        url: str,
        max_streams: int = MAX_STREAMS,
        channel: str = CHANNEL,
        still_down_every_s: float = STILL_DOWN_EVERY_S,
    ):
        super().__init__(max_streams)
        import redis  # imported here: a process without redis_url never needs the client

        self._redis = redis
        self._channel = channel
        self._client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10
        )
        self._pending: set[bytes] = set()
        self._pending_all = False
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.connected = threading.Event()  # the listener is subscribed (tests wait on it)
        self._still_down_every_s = still_down_every_s
        self._outage: _Outage | None = None  # listener thread only
        self._threads = [
            threading.Thread(target=self._run_publisher, name="tasktree-live-pub", daemon=True),
            threading.Thread(target=self._run_listener, name="tasktree-live-sub", daemon=True),
        ]

    @property
    def up(self) -> bool:
        return self.connected.is_set()

    def start(self) -> RedisBus:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        super().close()
        for thread in self._threads:
            thread.join(5)
        self._client.close()

    def publish(self, trace_ids: Iterable[bytes]) -> None:
        """Folder listener: record the ids for the publisher thread.  Never blocks on Redis."""
        with self._wake:
            self._pending.update(trace_ids)
            if len(self._pending) > _MAX_IDS_PER_MESSAGE:
                self._pending_all, self._pending = True, set()
            self._wake.notify()

    def _take_pending(self) -> tuple[bool, frozenset[bytes] | None]:
        """Wait for ids to send: (stopping, the ids or None for "all runs")."""
        with self._wake:
            while not (self._pending or self._pending_all or self._stop.is_set()):
                self._wake.wait()
            if self._stop.is_set():
                return True, None
            taken = _EVERYTHING if self._pending_all else frozenset(self._pending)
            self._pending, self._pending_all = set(), False
            return False, taken

    def _run_publisher(self) -> None:
        while True:
            stopping, trace_ids = self._take_pending()
            if stopping:
                return
            try:
                self._client.publish(self._channel, encode_message(trace_ids))
            except self._redis.RedisError as exc:
                # Degrade, don't drop: this process's own pages still hear of its own folds.
                logger.debug("live update not published to Redis (%s); delivered locally", exc)
                self.deliver(trace_ids)

    def _run_listener(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.0
            except (self._redis.RedisError, OSError) as exc:
                self.connected.clear()
                if self._outage is None:
                    self._outage = _Outage(self._still_down_every_s)
                self._outage.still(exc)
                backoff = min(5.0, backoff * 2 or 0.2)
                self._stop.wait(backoff)

    def _listen(self) -> None:
        """Subscribe and deliver until stopped; raises when the connection fails."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel)
            self.connected.set()
            if self._outage is not None:
                self._outage.over()
                self._outage = None
            # Pages opened before this subscription (at start-up, or while Redis was away) may
            # have missed messages: each re-fetches once.
            self.deliver(_EVERYTHING)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    self.deliver(decode_message(message["data"]))
        finally:
            pubsub.close()


class _Outage:
    """Redis lost by a ``RedisBus``: said at once, again every ``every_s`` while it lasts (a
    single line scrolls away, and the pages look fine meanwhile), and once more when it ends."""

    def __init__(self, every_s: float):
        self._every_s = every_s
        self._since = time.monotonic()
        self._said: float | None = None

    def still(self, exc: Exception) -> None:
        """Another failed attempt; says so when due."""
        now = time.monotonic()
        if self._said is None:
            logger.warning(
                "live updates through Redis paused: %s; this process's pages show its own"
                " changes only, until Redis is back",
                exc,
            )
        elif now - self._said >= self._every_s:
            logger.warning(
                "live updates through Redis still paused after %s: %s",
                duration(now - self._since),
                exc,
            )
        else:
            return
        self._said = now

    def over(self) -> None:
        down = duration(time.monotonic() - self._since)
        logger.warning("live updates through Redis resumed after %s down", down)


class PostgresBus(LocalBus):
    """Fan-out through PostgreSQL LISTEN/NOTIFY: the fallback when several processes share one
    database without Redis (``tasktree serve --workers N``: folds done by the worker processes
    reach the pages the serving process streams).

    ``publish`` sends a NOTIFY (on the folder thread, own connection); a listener thread delivers
    every notification to this process's streams.  Losing the database pauses live updates only.
    """

    CHANNEL = "tasktree_live"
    _MAX_PAYLOAD = 7000  # NOTIFY payloads must stay under 8000 bytes

    def __init__(self, database_url: str, max_streams: int = MAX_STREAMS, listen: bool = True):
        super().__init__(max_streams)
        self._url = database_url
        self._listen = listen
        self._publisher: psycopg.Connection | None = None
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run_listener, name="tasktree-live-pg", daemon=True
        )

    @property
    def up(self) -> bool:
        return self._listening.is_set() or not self._listen

    def start(self) -> PostgresBus:
        if self._listen:
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        super().close()
        with self._publish_lock:
            if self._publisher is not None:
                self._publisher.close()

    def publish(self, trace_ids: Iterable[bytes]) -> None:
        payload = encode_message(frozenset(trace_ids))
        if len(payload) > self._MAX_PAYLOAD:
            payload = b"*"
        try:
            with self._publish_lock:
                if self._publisher is None or self._publisher.closed:
                    self._publisher = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
                self._publisher.execute(
                    "SELECT pg_notify(%s, %s)", (self.CHANNEL, payload.decode())
                )
        except psycopg.Error as exc:
            logger.warning("live updates: NOTIFY failed (%s)", exc)
            self._publisher = None

    def _run_listener(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    self._listening.set()
                    self.deliver(None)  # anything may have changed while we were not listening
                    backoff = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=100):
                            self.deliver(decode_message(note.payload.encode()))
            except psycopg.Error as exc:
                self._listening.clear()
                logger.warning("live updates: LISTEN lost (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                # Short: after a failover the new primary is found within seconds.
                backoff = min(backoff * 2, 2.0)


def encode_message(trace_ids: frozenset[bytes] | None) -> bytes:
    """Comma-separated hex trace ids; ``*`` for every run."""
    if trace_ids is None:
        return b"*"
    return b",".join(t.hex().encode("ascii") for t in sorted(trace_ids))


def decode_message(data: bytes) -> frozenset[bytes] | None:
    """The ids of a channel message; anything malformed counts as "every run" (safe: a re-fetch)."""
    try:
        if data == b"*":
            return None
        return frozenset(bytes.fromhex(part.decode("ascii")) for part in data.split(b","))
    except (ValueError, UnicodeDecodeError):
        return None


def open_bus(
    redis_url: str | None,
    max_streams: int = MAX_STREAMS,
    *,
    database_url: str | None = None,
    listen: bool = True,
) -> LocalBus:
    """The bus for these settings, started: Redis when ``redis_url`` is set; else PostgreSQL
    LISTEN/NOTIFY when ``database_url`` is given (several processes on one database); else
    in-process.  ``listen=False`` only publishes (a process that serves no pages)."""
    if redis_url:
        bus: LocalBus = RedisBus(redis_url, max_streams)
    elif database_url:
        bus = PostgresBus(database_url, max_streams, listen=listen)
    else:
        bus = LocalBus(max_streams)
    return bus.start()
