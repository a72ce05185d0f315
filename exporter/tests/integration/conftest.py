"""Fixtures of the integration tests beyond the root conftest.py's database ones: a private
PostgreSQL to stop (``faults_support``), the docker lab and apps on it (``docker_support``), and the
UI tests' browser (for the Containers page and the abused tree's page)."""

from ..ui.browser import browser, browser_context, page_errors  # noqa: F401  (fixtures)
from .docker_support import docker_lab_session, docker_pool, emptied_lab, make_app  # noqa: F401
from .faults_support import embedded_pg  # noqa: F401  (fixture: a private PostgreSQL to stop)
