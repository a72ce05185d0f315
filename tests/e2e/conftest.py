"""The end-to-end tests: a whole ``tasktree serve`` (the root conftest.py's ``start_tasktree`` and
``tasktree_server``) driven from outside, as users and their jobs do.

The jobs these tests run are the instrumentation's test jobs, with their harness (``job_support``,
``propagation_matrix``, ``engine_support``): it stays with the instrumentation tests, which use it
too, and its folder is put on the import path here so that this folder also runs on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

INSTRUMENTATION_TESTS = Path(__file__).resolve().parents[2] / "instrumentation" / "tests"

if str(INSTRUMENTATION_TESTS) not in sys.path:
    sys.path.append(str(INSTRUMENTATION_TESTS))
