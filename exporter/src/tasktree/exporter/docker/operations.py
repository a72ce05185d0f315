"""Long actions (pull, deploy) as operations: per-host progress that can be polled and streamed.

An ``Operation`` is mutated only by its own worker threads through ``host_update``/``finish``;
readers take ``snapshot()`` (a JSON-able dict) or ``wait_change(seq, timeout)`` to stream.  The
registry keeps the latest operations of this process in memory; with Redis configured each
snapshot is also published there (``tasktree:docker:op:<id>``, kept an hour) so another
``tasktree serve`` process behind the same load balancer can answer a poll.  The durable record
of who did what is the audit log (``audit.py``), not this.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from tasktree.exporter.docker.listing import rfc3339

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

PENDING, RUNNING, OK, ERROR, SKIPPED = "pending", "running", "ok", "error", "skipped"
_FINAL = {OK, ERROR, SKIPPED}
_KEEP = 200
_REDIS_TTL_S = 3600


class Operation:
    """One pull or deploy over several hosts.  Thread-safe."""

    def __init__(
        self, kind: str, hosts: list[str], request: dict, actor: str, *, dry_run: bool = False
    ):
        self.id = secrets.token_hex(8)
        self.kind = kind
        self.request = request  # already redacted by the caller: never holds secret values
        self.actor = actor
        self.dry_run = dry_run
        self.status = RUNNING
        self.trace_id: str | None = None
        self.audit_id: int | None = None
        self.created = time.time()
        self.finished: float | None = None
        self.hosts = {
            h: {
                "status": PENDING,
                "message": "",
                "progress": None,
                "result": None,
                "span_id": None,
                "started": None,
                "finished": None,
            }
            for h in hosts
        }
        self.seq = 0
        self._cond = threading.Condition()
        # For publishing; must not raise.
        self.on_change: Callable[[dict], None] | None = None

    def host_update(self, host: str, **fields) -> None:
        """Set some of status/message/progress/result/span_id for one host, and wake the streams."""
        with self._cond:
            state = self.hosts[host]
            if fields.get("status") == RUNNING and state["started"] is None:
                state["started"] = rfc3339(time.time())
            if fields.get("status") in _FINAL:
                state["finished"] = rfc3339(time.time())
            state.update(fields)
            self._changed()

    def finish(self) -> str:
        """Derive the overall status from the hosts (``ok``, ``error`` or ``partial``) and end."""
        with self._cond:
            statuses = {s["status"] for s in self.hosts.values()}
            if statuses <= {OK, SKIPPED}:
                self.status = OK
            elif OK in statuses:
                self.status = "partial"
            else:
                self.status = ERROR
            self.finished = time.time()
            self._changed()
            return self.status

    @property
    def done(self) -> bool:
        return self.finished is not None

    def _changed(self) -> None:
        self.seq += 1
        self._cond.notify_all()
        if self.on_change is not None:
            try:
                self.on_change(self._snapshot_locked())
            except Exception:
                logger.exception("publishing docker operation %s failed", self.id)

    def snapshot(self) -> dict:
        with self._cond:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "dry_run": self.dry_run,
            "actor": self.actor,
            "created": rfc3339(self.created),
            "finished": rfc3339(self.finished),
            "trace_id": self.trace_id,
            "audit_id": self.audit_id,
            "request": self.request,
            "seq": self.seq,
            "hosts": {h: dict(s) for h, s in self.hosts.items()},
        }

    def wait_change(self, seen_seq: int, timeout: float) -> dict:
        """Block until ``seq`` passes ``seen_seq`` (or ``timeout``), then return a snapshot."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > seen_seq, timeout=timeout)
            return self._snapshot_locked()

    def wait_done(self, timeout: float) -> dict:
        with self._cond:
            self._cond.wait_for(lambda: self.finished is not None, timeout=timeout)
            return self._snapshot_locked()


class OperationRegistry:
    """The latest operations of this process (and, with Redis, of all processes)."""

    def __init__(self, redis_url: str | None = None):
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )

    def add(self, op: Operation) -> Operation:
        if self._redis is not None:
            op.on_change = self._publish
        with self._lock:
            self._ops[op.id] = op
            while len(self._ops) > _KEEP:
                oldest = next(iter(self._ops))
                if not self._ops[oldest].done:
                    break
                self._ops.popitem(last=False)
        return op

    def get(self, op_id: str) -> Operation | None:
        with self._lock:
            return self._ops.get(op_id)

    def remote_snapshot(self, op_id: str) -> dict | None:
        """The snapshot another process published to Redis, if any."""
        if self._redis is None:
            return None
        try:
            raw = self._redis.get("tasktree:docker:op:" + op_id)
        except Exception:  # noqa: BLE001
            return None
        return json.loads(raw) if raw else None

    def recent(self, limit: int = 50) -> list[dict]:
        with self._lock:
            ops = list(self._ops.values())[-limit:]
        return [op.snapshot() for op in reversed(ops)]

    def _publish(self, snapshot: dict) -> None:
        # Progress of a pull changes many times a second; the final state always gets through.
        if self._redis is None:  # add() attaches this only with Redis
            return
        try:
            self._redis.set(
                "tasktree:docker:op:" + snapshot["id"], json.dumps(snapshot), ex=_REDIS_TTL_S
            )
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
