"""Fixtures of the integration tests beyond the root conftest.py's database ones."""

from .faults_support import embedded_pg  # noqa: F401  (fixture: a private PostgreSQL to stop)
