"""Prometheus metrics of the docker hosts: collected concurrently and bounded in time per scrape.

``DockerMetrics(service)`` is a prometheus_client custom collector: register it on the ``/metrics``
registry (``registry.register(service.metrics)``) or call ``collect()``.  Each scrape takes the
hosts' listing (cached for ``TASKTREE_DOCKER_CACHE_TTL``, each host bounded by its timeout), then
inspects every container and reads one-shot stats of the running ones, all at once, and stops
waiting after ``TASKTREE_DOCKER_TIMEOUT``: a container that did not answer in time is left out of
the CPU, memory and restart series of that scrape (its state series is still there).

============================================  =======  =============================================
name                                          type     labels
============================================  =======  =============================================
``tasktree_docker_host_up``                   gauge    host
``tasktree_docker_host_info``                 gauge    host, version, api_version (value 1)
``tasktree_container_state``                  gauge    host, container, state (1: the current one)
``tasktree_container_cpu_seconds_total``      counter  host, container
``tasktree_container_memory_bytes``           gauge    host, container (usage less inactive cache)
``tasktree_container_restarts_total``         counter  host, container (the engine's RestartCount)
============================================  =======  =============================================
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger(__name__)

STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")


class DockerMetrics:
    """A custom collector: fresh metric families at each scrape.  ``collect()`` never raises."""

    def __init__(self, service, *, max_workers: int = 32):
        self._service = service
        self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="docker-metrics")

    def describe(self):
        # Describing must not scrape the hosts (prometheus_client calls it at registration).
        return list(_families().values())

    def collect(self):
        try:
            return self._collect()
        except Exception:
            logger.exception("collecting docker metrics failed")
            return []

    def _collect(self):
        service = self._service
        started = time.monotonic()
        hosts = service.inventory.snapshot()
        families = _families()
        details: dict[tuple[str, str], cf.Future[dict]] = {}
        for host in hosts:
            if host["up"]:
                for c in host["containers"]:
                    details[(host["name"], c["name"])] = self._pool.submit(
                        self._detail, host["name"], c
                    )
        budget = service.settings.docker_timeout - (time.monotonic() - started)
        cf.wait(list(details.values()), timeout=max(0.05, budget))
        for pending in details.values():
            pending.cancel()  # not started yet: drop it rather than let slow scrapes pile up
        for host in hosts:
            families["up"].add_metric([host["name"]], 1.0 if host["up"] else 0.0)
            if host.get("version"):
                families["info"].add_metric(
                    [host["name"], host["version"], host.get("api_version") or ""], 1.0
                )
            for c in host["containers"]:
                labels = [host["name"], c["name"]]
                for state in STATES:
                    families["state"].add_metric(
                        [*labels, state], 1.0 if c["state"] == state else 0.0
                    )
                future = details.get((host["name"], c["name"]))
                if future is None or not future.done() or future.exception() is not None:
                    continue
                detail = future.result()
                families["restarts"].add_metric(labels, detail["restarts"])
                if detail.get("cpu") is not None:
                    families["cpu"].add_metric(labels, detail["cpu"])
                if detail.get("memory") is not None:
                    families["memory"].add_metric(labels, detail["memory"])
        return list(families.values())

    def _detail(self, host: str, container: dict) -> dict:
        client = self._service.clients.client(host)
        info = client.inspect_container(container["id"])
        detail: dict[str, float | None] = {"restarts": float(info.get("RestartCount", 0))}
        if container["state"] == "running":
            one_shot = _version_at_least(client.api_version, "1.41") or None
            stats = client.stats(container["id"], stream=False, one_shot=one_shot)
            detail["cpu"] = (
                stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0) / 1e9
            )
            detail["memory"] = _memory(stats.get("memory_stats") or {})
        return detail

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _memory(mem: dict) -> float | None:
    """Working set as ``docker stats`` shows it: usage less the inactive file cache."""
    if "usage" not in mem:
        return None
    extra = mem.get("stats") or {}
    inactive = extra.get("inactive_file", extra.get("total_inactive_file", 0))
    return float(max(0, mem["usage"] - inactive))


def _version_at_least(version: str, minimum: str) -> bool:
    return tuple(int(p) for p in version.split(".")) >= tuple(int(p) for p in minimum.split("."))


def _families() -> dict:
    host, container = ["host"], ["host", "container"]
    return {
        "up": GaugeMetricFamily(
            "tasktree_docker_host_up",
            "Whether the docker host answered its last listing within its timeout (1) or not (0).",
            labels=host,
        ),
        "info": GaugeMetricFamily(
            "tasktree_docker_host_info",
            "The docker engine's version (value 1).",
            labels=[*host, "version", "api_version"],
        ),
        "state": GaugeMetricFamily(
            "tasktree_container_state",
            "The container's state: 1 for the current one, 0 for the others.",
            labels=[*container, "state"],
        ),
        "cpu": CounterMetricFamily(
            "tasktree_container_cpu_seconds",
            "CPU time the container has used, in seconds.",
            labels=container,
        ),
        "memory": GaugeMetricFamily(
            "tasktree_container_memory_bytes",
            "Memory the container uses, less the inactive file cache (as docker stats shows it).",
            labels=container,
        ),
        "restarts": CounterMetricFamily(
            "tasktree_container_restarts",
            "How many times the engine has restarted the container (its restart policy).",
            labels=container,
        ),
    }
