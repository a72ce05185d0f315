"""``GET /metrics``: the route, for a viewer."""

from __future__ import annotations

from flask import Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from tasktree.exporter.auth import VIEWER, require
from tasktree.exporter.metrics.service import ServiceMetrics

__all__ = ["metrics_view", "mount"]


def mount(app: Flask) -> None:
    """Serve ``/metrics`` from ``app.extensions["tasktree"]["metrics"]`` (+ the docker hosts')."""
    ext = app.extensions["tasktree"]
    metrics = ext.get("metrics")
    if metrics is None:
        metrics = ext["metrics"] = ServiceMetrics(
            ext["pool"], ext["settings"], ext.get("folder"), registry=CollectorRegistry()
        )
    docker = ext.get("docker")
    if docker is not None and getattr(docker, "metrics", None) is not None:
        metrics.add_collector(docker.metrics)
    app.add_url_rule("/metrics", "metrics", view_func=metrics_view)


@require(VIEWER)
def metrics_view() -> Response:
    """``GET /metrics`` in the Prometheus text format; a viewer may read it."""
    metrics = current_app.extensions["tasktree"]["metrics"]
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
