"""``GET /metrics``: the route, for a viewer."""

from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from tasktree.exporter.auth import VIEWER, require
from tasktree.exporter.metrics.service import ServiceMetrics
from tasktree.exporter.services import current_services, services_of

__all__ = ["metrics_view", "mount"]


def mount(app: Flask) -> None:
    """Serve ``/metrics`` from the app's ``ServiceMetrics`` (built here when the app has none),
    with the docker hosts' families."""
    services = services_of(app)
    if services.metrics is None:
        services.metrics = ServiceMetrics(
            services.pool,
            services.settings,
            services.folder,
            registry=CollectorRegistry(),
            reads=services.reads,
        )
    if services.docker is not None:
        services.metrics.add_collector(services.docker.metrics)
    app.add_url_rule("/metrics", "metrics", view_func=metrics_view)


@require(VIEWER)
def metrics_view() -> Response:
    """``GET /metrics`` in the Prometheus text format; a viewer may read it."""
    metrics = current_services().metrics
    assert metrics is not None  # mount() gave the app one
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
