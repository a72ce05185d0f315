"""tasktree-exporter: the tasktree service.

OTLP in (gRPC and HTTP), the task tree in PostgreSQL, a JSON API and web UI on top.
Start it with ``tasktree serve``; see the README for configuration.
"""

from tasktree.exporter.settings import Settings

__all__ = ["Settings"]
