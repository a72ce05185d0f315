"""``/metrics``: what tasktree knows about batch jobs, in Prometheus form (design.md §5).

Two kinds of series, so that several ``tasktree serve`` processes on one database are right:

* **Read from PostgreSQL** (every process shows the same value; aggregate with ``max by``):
  finished tasks and runs and their durations (``metric_totals``, added to by whichever process
  folded them: ``store/metric_totals.py``), running/stalled/missing-parent tasks, the per-job
  timestamps, the ingest backlog and lag (``store_metrics.py``, written as text by
  ``exposition.py``).
* **Per process** (each shows what it alone did; aggregate with ``sum by``): ingest requests,
  accepted and rejected spans and request latency, spans folded (a server's with its fold
  workers', which serve no /metrics: ``fold_workers.py``), the connection pool, ``process_*``
  (``process.py``).

``service.py`` puts both together for one process; ``view.py`` serves them.

Task names are bounded per job: the first ``TASKTREE_METRICS_TASK_NAMES`` names a job finishes get
their own ``task`` label value, shared by all processes through PostgreSQL; later names are counted
as ``__other__`` (the overflow series of OpenTelemetry's cardinality limits, and stable: a series
never changes its meaning).  Jobs are bounded the same way: the first ``TASKTREE_METRICS_MAX_JOBS``
jobs get their own ``job_name``; the finished tasks and runs of later ones are counted under
``job_name="__other__"`` (all their task names as ``__other__``), their running, stalled and
missing-parent tasks too, and their timestamps are not shown.  A job tasktree has not seen for
``TASKTREE_METRICS_JOB_TTL`` seconds leaves /metrics and frees its place (its totals are deleted:
if it comes back its counters start again, as a new series).

The label for the job is ``job_name``: ``job`` is Prometheus's own target label.
"""

from tasktree.exporter.metrics.service import ServiceMetrics
from tasktree.exporter.metrics.store_metrics import StoreMetrics
from tasktree.exporter.metrics.view import metrics_view, mount
from tasktree.exporter.store.fold import DURATION_BUCKETS
from tasktree.exporter.store.metric_totals import OTHER, FoldTotals

__all__ = [
    "DURATION_BUCKETS",
    "OTHER",
    "FoldTotals",
    "ServiceMetrics",
    "StoreMetrics",
    "metrics_view",
    "mount",
]
