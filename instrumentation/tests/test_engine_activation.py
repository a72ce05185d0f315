"""The engine integrations are activated lazily: nothing of an engine is imported unless the job
imports it, and both ``configure()`` and ``opentelemetry-instrument`` install the integration of
an engine the job imports (before or after setting tasktree up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_environment
from tasktree.instrumentation.integrations import ENGINES

BIN = Path(sys.executable).parent
ENGINE_MODULES = ("celery", "kombu", "dask", "distributed", "ray", "rq")

# Prints the engine modules loaded after set-up, then imports one engine and prints whether its
# integration was installed.
_JOB = """
import json, sys
{before}
{setup}
loaded = sorted(m for m in {engine_modules!r} if m in sys.modules)
import {engine}
installed = "tasktree.instrumentation.integrations.{integration}" in sys.modules
print(json.dumps({{"loaded_after_setup": loaded, "installed": installed}}))
"""

CONFIGURE = "from tasktree.instrumentation import configure; configure()"


def _run(engine: str, setup: str, before: str = "", *, instrument: bool = False) -> dict:
    script = _JOB.format(
        before=before, setup=setup, engine=engine, engine_modules=ENGINE_MODULES,
        integration=ENGINES[engine],
    )  # fmt: skip
    command = [sys.executable, "-c", script]
    if instrument:
        command = [str(BIN / "opentelemetry-instrument"), *command]
    env = child_environment("http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_configure_imports_no_engine_and_installs_the_one_the_job_imports_later(engine):
    result = _run(engine, CONFIGURE)
    assert result == {"loaded_after_setup": [], "installed": True}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_an_engine_imported_before_configure_is_installed_at_once(engine):
    result = _run(engine, CONFIGURE, before=f"import {engine}")
    assert result["installed"] is True


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_opentelemetry_instrument_activates_the_integration_of_an_imported_engine(engine):
    result = _run(engine, "", instrument=True)
    assert result == {"loaded_after_setup": [], "installed": True}


def test_without_tasktree_set_up_no_integration_is_installed():
    result = _run("rq", "import tasktree.instrumentation")
    assert result == {"loaded_after_setup": [], "installed": False}
