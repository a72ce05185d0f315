"""Fixtures for the Prometheus / Grafana / Collector / Compose tests (design.md §6).

Missing tools are installed (Debian's prometheus and alertmanager with apt-get when root; the npm
packages of ``schema-check/`` with ``npm ci``); when that is impossible the tests are skipped,
and under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import obs_support as obs
import pytest
from obs_support import unavailable


@pytest.fixture(scope="session")
def prometheus_tools() -> None:
    """prometheus, promtool and amtool on PATH (installed from Debian when missing)."""
    if obs.missing_prometheus_tools() and os.geteuid() == 0:
        try:
            obs.install_prometheus_tools()
        except subprocess.CalledProcessError as exc:
            unavailable(
                f"apt-get install {' '.join(obs.APT_PACKAGES)} failed: {exc.stderr[-500:]!r}"
            )
    missing = obs.missing_prometheus_tools()
    if missing:
        unavailable(f"missing {', '.join(missing)} (apt-get install {' '.join(obs.APT_PACKAGES)})")


@pytest.fixture(scope="session")
def schema_check_dir():
    """``schema-check/`` with its npm packages installed from the lockfile."""
    if shutil.which("npm") is None:
        unavailable("npm is not installed")
    folder = obs.SCHEMA_CHECK_DIR
    if not (folder / "node_modules" / "@grafana" / "schema").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            unavailable(f"npm ci in {folder} failed: {done.stderr[-1000:]}")
    return folder


@pytest.fixture(scope="session")
def rotel_agent() -> str:
    """The ``rotel-agent`` binary of the PyPI package ``rotel`` (a real OTLP collector)."""
    try:
        import rotel
    except ImportError:
        unavailable("the PyPI package rotel is not installed (requirements-test.txt)")
    path = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    if not os.access(path, os.X_OK):
        unavailable(f"{path} is missing or not executable")
    return path


@pytest.fixture
def prometheus_factory(prometheus_tools, tmp_path):
    """``start(targets, rules_dir=None, interval="1s")`` → a running ``obs.Prometheus``."""
    started = []

    def start(targets, rules_dir=None, interval="1s", bearer=None):
        server = obs.Prometheus(
            tmp_path / f"prometheus-{len(started)}", targets, rules_dir, interval, bearer
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
