"""Engine integrations: the right parent on Celery, Dask distributed, Ray and RQ.

``configure()`` (and so ``opentelemetry-instrument``) calls :func:`activate`, which registers a
post-import hook per engine: an integration is installed when the job imports its engine (at once
if it already has), so nothing of an engine is imported by tasktree itself.

Every integration does the same two things through the engine's own extension points:

- where work is submitted, the current task is written into the message or task as a W3C
  ``traceparent`` carrier (:func:`~tasktree.instrumentation.integrations._context.carrier`);
- where it runs, the first task started with no current task takes the submitter as its parent
  (:func:`~tasktree.instrumentation.integrations._context.register_ambient_parent`), together with
  engine attributes such as the attempt number.

A message with no carrier or a malformed one runs normally as a run of its own (logged once).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading

import wrapt

_logger = logging.getLogger(__name__)

ENGINES: dict[str, str] = {
    "celery": "celery",
    "distributed": "dask",
    "ray": "ray",
    "rq": "rq",
}
"""The module a job imports → the integration module (in this package) installed when it does."""

_activated = False
_lock = threading.Lock()


def activate() -> None:
    """Installs each engine's integration when (or as soon as) the job imports the engine."""
    global _activated
    with _lock:
        if _activated:
            return
        _activated = True
    for engine_module, integration in ENGINES.items():
        wrapt.register_post_import_hook(functools.partial(_install, integration), engine_module)


def _install(integration: str, engine_module) -> None:
    try:
        importlib.import_module(f"{__name__}.{integration}").install()
    except Exception:
        _logger.exception(
            "tasktree: cannot install the %s integration; its tasks will not be linked",
            integration,
        )
