"""Fixtures for the instrumentation tests: an OTLP test sink.  The runner for child scripts is in
``job_support.py``; the engine tests still import it from here, hence the re-export."""

from __future__ import annotations

import pytest
from job_support import SCRIPTS, child_environment, run_script  # noqa: F401  (re-exported)
from otlp_sink import OTLPSink


@pytest.fixture
def otlp_sink():
    with OTLPSink() as sink:
        yield sink
