"""A small TTL cache of JSON-able values: in this process, or in Redis shared by several processes.

Both never raise to the caller: a Redis outage logs once and behaves as a miss (the listing then
asks the hosts, which is correct, only slower).
"""

from __future__ import annotations

import json
import logging
import threading
import time

logger = logging.getLogger(__name__)

_PREFIX = "tasktree:docker:"


class MemoryCache:
    """Thread-safe in-process TTL cache."""

    def __init__(self):
        self._items: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, object]:
        now = time.monotonic()
        with self._lock:
            return {
                k: v
                for k in keys
                if (item := self._items.get(k)) and item[0] > now
                for v in [item[1]]
            }

    def set(self, key: str, value: object, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + ttl, value)
            if len(self._items) > 10_000:  # expired entries of hosts no longer configured
                now = time.monotonic()
                self._items = {k: v for k, v in self._items.items() if v[0] > now}

    def delete(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._items.pop(key, None)

    def close(self) -> None:
        pass


class RedisCache:
    """The same interface over Redis (``SET key json PX ttl``, ``MGET``); errors become misses."""

    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._warned = False

    def get_many(self, keys: list[str]) -> dict[str, object]:
        if not keys:
            return {}
        try:
            values = self._redis.mget([_PREFIX + k for k in keys])
        except Exception as exc:  # noqa: BLE001 (any Redis failure is a miss)
            self._warn(exc)
            return {}
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set(self, key: str, value: object, ttl: float) -> None:
        if ttl <= 0:
            return
        try:
            self._redis.set(
                _PREFIX + key, json.dumps(value, separators=(",", ":")), px=int(ttl * 1000)
            )
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def delete(self, keys: list[str]) -> None:
        try:
            if keys:
                self._redis.delete(*[_PREFIX + k for k in keys])
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "docker listing cache: Redis unavailable, asking the hosts directly: %s", exc
            )

    def close(self) -> None:
        self._redis.close()


def make_cache(redis_url: str | None):
    return RedisCache(redis_url) if redis_url else MemoryCache()
