"""Docker hosts (issue 6): see every host's containers and images at once, pull, batch deploy, act.

service = DockerService(settings, pool)          # hosts from TASKTREE_DOCKER_HOSTS(_FILE)
create_app(settings, pool, docker=service)       # app.py registers docker_blueprint
service.connect_tracing(own_otlp_http_url, own_token)   # server.py: its runs, job tasktree.docker
metrics.add_collector(service.metrics)           # metrics/view.py: tasktree_docker_*, _container_*
"""

from tasktree.exporter.docker.hosts import load_hosts
from tasktree.exporter.docker.routes import docker_blueprint
from tasktree.exporter.docker.service import DockerService
from tasktree.exporter.settings import Settings, SettingsError

__all__ = ["DockerService", "check_docker_hosts", "docker_blueprint"]


def check_docker_hosts(settings: Settings) -> None:
    """Stop start-up (``SystemExit`` with the reason) when the docker hosts configuration is bad."""
    try:
        load_hosts(settings)
    except SettingsError as exc:
        raise SystemExit(f"tasktree: {exc}") from None
