"""Seeing every host at once: containers, images and engine version, collected concurrently.

``Inventory.snapshot()`` asks every host whose cached snapshot is missing or stale in parallel
(``/version``, ``/containers/json?all=1`` and ``/images/json`` of each host at the same time), waits
for each host at most its timeout, and shows a host that did not answer in time, or failed, as down
with the reason.  So a slow or dead host costs its timeout, not the page.  Results, down hosts
included, are cached for ``ttl`` seconds (``refresh=True`` skips the cache); concurrent callers
share
one fetch per host.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import http.client
import logging
import threading
import time
from datetime import UTC, datetime

import docker.errors
import requests.exceptions
import urllib3.exceptions

from tasktree.exporter.docker.hosts import HostClients, HostUnreachable

logger = logging.getLogger(__name__)

VERSION_EVERY_S = 60.0


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# requests raises ChunkedEncodingError for an answer cut short, whether chunked or not
# ("IncompleteRead(121 bytes read, 879 more expected)"); streams read raw meet urllib3's own.
_CUT_MID_ANSWER = (
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    http.client.IncompleteRead,
)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free reason for a host or action failure."""
    if isinstance(exc, HostUnreachable):
        return str(exc)
    if isinstance(exc, docker.errors.APIError):
        return f"{exc.status_code}: {exc.explanation or exc}"
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return "no answer in time"
    if isinstance(exc, _CUT_MID_ANSWER):  # connected, then the answer broke off
        return "connection lost mid-answer"
    if isinstance(exc, requests.exceptions.ConnectionError | docker.errors.DockerException):
        text = str(exc)
        for hint in ("No such file or directory", "Connection refused", "Connection reset"):
            if hint in text:
                return f"cannot connect: {hint.lower()}"
        return f"cannot connect: {text[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class Inventory:
    """Listing with per-host timeouts and a TTL cache.  Thread-safe; methods block at most the
    slowest
    host's timeout (plus a little)."""

    def __init__(self, clients: HostClients, cache, ttl: float, *, max_workers: int = 64):
        self.clients = clients
        self.cache = cache
        self.ttl = ttl
        self._hosts_pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="docker-host")
        self._calls_pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="docker-call")
        self._inflight: dict[str, cf.Future] = {}
        # This process's view: (message, when).
        self._last_error: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def snapshot(self, names: list[str] | None = None, *, refresh: bool = False) -> list[dict]:
        """One dict per host (configured order): status, version, error, containers and images."""
        names = list(self.clients.hosts) if names is None else names
        cached = {} if refresh else self.cache.get_many([_key(n) for n in names])
        futures = {n: self._fetch(n) for n in names if _key(n) not in cached}
        started = time.monotonic()
        results = {n: cached[_key(n)] for n in names if _key(n) in cached}
        for name, future in futures.items():
            remaining = self.clients.timeout(name) - (time.monotonic() - started)
            try:
                results[name] = future.result(timeout=max(0.0, remaining) + 0.05)
            except cf.TimeoutError:
                results[name] = self._down(
                    name, f"no answer within {self.clients.timeout(name):g}s", started
                )
        return [results[n] for n in names]

    def invalidate(self, names: list[str]) -> None:
        """Forget cached snapshots (after an action changed these hosts)."""
        self.cache.delete([_key(n) for n in names])

    def _fetch(self, name: str) -> cf.Future:
        with self._lock:
            future = self._inflight.get(name)
            if future is not None:
                return future
            future = self._inflight[name] = self._hosts_pool.submit(self._fetch_host, name)
        # Outside the lock: a future that is already done runs its callback right here.
        future.add_done_callback(functools.partial(self._forget, name))
        return future

    def _forget(self, name: str, done: cf.Future) -> None:
        with self._lock:
            if self._inflight.get(name) is done:
                del self._inflight[name]

    def _fetch_host(self, name: str) -> dict:
        """Runs on a host thread: the calls on call threads at once, then cache the result.

        The engine's version is asked again only every ``VERSION_EVERY_S`` and after the host was
        down (an engine restart may be an upgrade): one call less per host and listing.
        """
        started = time.monotonic()
        try:
            client = self.clients.client(name)
            calls = {
                "containers": self._calls_pool.submit(client.containers, all=True),
                "images": self._calls_pool.submit(client.images),
            }
            if self.clients.version_age(name) > VERSION_EVERY_S:
                calls["version"] = self._calls_pool.submit(client.version, api_version=False)
            got = {k: f.result() for k, f in calls.items()}
        except (requests.exceptions.Timeout, TimeoutError):
            result = self._down(name, f"no answer within {self.clients.timeout(name):g}s", started)
        except Exception as exc:  # noqa: BLE001 (any failure means: this host is down, say why)
            result = self._down(name, describe_error(exc), started)
        else:
            if "version" in got:
                self.clients.remember_version(name, got["version"])
            result = self._up(name, got, started)
        if not result["up"]:
            self.clients.version_is_stale(name)
        self.cache.set(_key(name), result, self.ttl)
        return result

    def _base(self, name: str, started: float) -> dict:
        info = self.clients.version_info(name) or {}
        last_error, last_error_at = self._last_error.get(name, (None, None))
        return {
            **self.clients.hosts[name].public(),
            "version": info.get("Version"),
            "api_version": info.get("ApiVersion"),
            "os": info.get("Os"),
            "latency": round(time.monotonic() - started, 4),
            "checked_at": rfc3339(time.time()),
            "last_error": last_error,
            "last_error_at": last_error_at,
        }

    def _up(self, name: str, got: dict, started: float) -> dict:
        return {
            **self._base(name, started),
            "up": True,
            "error": None,
            "containers": [container_view(name, c) for c in got["containers"]],
            "images": [image_view(name, i) for i in got["images"]],
        }

    def _down(self, name: str, error: str, started: float) -> dict:
        self._last_error[name] = (error, rfc3339(time.time()))  # shown while up again, too
        return {
            **self._base(name, started),
            "up": False,
            "error": error,
            "containers": [],
            "images": [],
        }

    def close(self) -> None:
        self._hosts_pool.shutdown(wait=False, cancel_futures=True)
        self._calls_pool.shutdown(wait=False, cancel_futures=True)


def _key(name: str) -> str:
    return "host:" + name


def container_view(host: str, c: dict) -> dict:
    """A container as the API shows it (no environment: it may hold secrets)."""
    names = c.get("Names") or []
    return {
        "host": host,
        "id": c.get("Id"),
        "name": names[0].lstrip("/") if names else c.get("Id", "")[:12],
        "image": c.get("Image"),
        "image_id": c.get("ImageID"),
        "command": c.get("Command"),
        "state": c.get("State"),
        "status": c.get("Status"),
        "created": rfc3339(c.get("Created")),
        "labels": c.get("Labels") or {},
        "ports": [
            {
                "private": p.get("PrivatePort"),
                "public": p.get("PublicPort"),
                "type": p.get("Type"),
                "ip": p.get("IP"),
            }
            for p in c.get("Ports") or []
        ],
    }


def image_view(host: str, i: dict) -> dict:
    return {
        "host": host,
        "id": i.get("Id"),
        "tags": [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"],
        "digests": i.get("RepoDigests") or [],
        "size": i.get("Size"),
        "created": rfc3339(i.get("Created")),
    }
