"""The PostgreSQL-backed families of /metrics as Prometheus text (format 0.0.4), written directly.

These families hold most of the samples (a histogram per job and task name), so they are written
straight to the text format: prometheus_client's generic exposition costs ~10 µs a sample, over
200 ms for 100 jobs of 10 task names.  ``promtool check metrics`` checks the result in the tests,
and a golden test holds the exact text.  Pure: rows in, bytes out (``store_metrics`` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from tasktree.exporter.store.fold import DURATION_BUCKETS
from tasktree.exporter.store.metric_totals import OTHER, Total
from tasktree.exporter.tree import status as st

__all__ = ["StoreRows", "TextExposition", "render_store_down", "render_store_text"]

_STATUS_LABEL = {st.OK: "ok", st.ERROR: "error"}
_LE = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]

UP_HELP = "Whether tasktree could read PostgreSQL for this scrape (1) or not (0)."
CREATED_HELP = (
    "When tasktree's database was created (its first migration, Unix time): tasktree has watched"
    " jobs since, across its restarts."
)
TASKS_FINISHED_HELP = (
    "Tasks that finished, by job, task name (the first TASKTREE_METRICS_TASK_NAMES of each job;"
    " the rest are __other__) and status."
)
JOB_TIMES = (
    ("tasktree_job_last_start_timestamp_seconds", "When the job's latest run started (Unix time)."),
    (
        "tasktree_job_last_success_timestamp_seconds",
        "When a run of the job last finished ok (Unix time); absent if none ever did.",
    ),
    (
        "tasktree_job_last_failure_timestamp_seconds",
        "When a run of the job last finished in error (Unix time); absent if none ever did.",
    ),
    (
        "tasktree_job_last_heartbeat_timestamp_seconds",
        "When tasktree last folded anything of the job: a task or a running task's heartbeat "
        "(Unix time).",
    ),
)
"""The per-job timestamp gauges, in the order of the ``jobs`` columns after the job."""
OLDEST_LIVE_RUN = "tasktree_job_oldest_running_run_start_timestamp_seconds"
OLDEST_LIVE_RUN_HELP = (
    "When the job's oldest run with a task running now (heartbeating, not stalled) started"
    " (Unix time); absent when none is: a run that hangs while later runs of the job come and go"
    " shows here."
)
LIVE_GAUGES = (
    (st.RUNNING, "tasktree_tasks_running", "Tasks running now, by job."),
    (
        st.STALLED,
        "tasktree_tasks_stalled",
        "Tasks that stopped sending heartbeats (TASKTREE_STALL_AFTER) without finishing, by job.",
    ),
)


@dataclass(frozen=True)
class StoreRows:
    """What one scrape read from PostgreSQL, each list sorted by job."""

    totals: list[tuple]
    """``metric_totals`` rows: (job, run, name, status, finished, duration_sum, buckets)."""
    jobs: list[tuple]
    """(job, last_start_ns, last_success_ns, last_failure_ns, last_seen_ns); None: never."""
    live: list[tuple]
    """(job, status, tasks, newest heartbeat_ns) of the running and stalled tasks."""
    missing: list[tuple]
    """(job, missing-parent placeholders)."""
    oldest_received_ns: int | None
    """When the oldest span not yet folded was received; None: none waits."""
    backlog: int | None
    """Spans received and not yet folded (None: none)."""
    now_s: float
    """Unix time of the read."""
    quarantined: int = 0
    """Spans set aside because they failed to fold (``store/quarantine.py``), counted up to
    ``quarantine.COUNTED_AT_MOST``."""
    created_s: float | None = None
    """Unix time the database was created (its first migration): tasktree has watched jobs
    since.  None: not known."""
    folded_jobs: int = 0
    """Jobs beyond the job cap, shown as ``OTHER`` (``store_metrics.bounded_jobs``)."""
    max_jobs: int | None = None
    """The job cap (``TASKTREE_METRICS_MAX_JOBS``); None: not bounded (not shown)."""
    live_runs: list[tuple] = field(default_factory=list)
    """(job, start_ns) of each job's oldest run with a task running now."""


class TextExposition:
    """Prometheus text format 0.0.4, appended piece by piece."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self._parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: str, value: float) -> None:
        """One sample; ``labels`` already written (``job_name="a",task="b"``) or empty."""
        if labels:
            self._parts.append(f"{name}{{{labels}}} {_number(value)}\n")
        else:
            self._parts.append(f"{name} {_number(value)}\n")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, "", value)

    def histogram(self, name: str, help_text: str, totals: dict[str, Total]) -> None:
        """One histogram family; ``totals`` by label prefix (``job_name="a",``, comma ended)."""
        self.family(name, "histogram", help_text)
        parts = self._parts  # the hottest loop of a scrape: no method call per sample
        for prefix, total in totals.items():
            running = 0
            for le, count in zip(_LE, total.buckets, strict=True):
                running += count
                parts.append(f'{name}_bucket{{{prefix}le="{le}"}} {running}\n')
            labels = prefix.rstrip(",")
            parts.append(
                f"{name}_sum{{{labels}}} {floatToGoString(total.duration_sum)}\n"
                f"{name}_count{{{labels}}} {running}\n"
            )

    def render(self) -> bytes:
        return "".join(self._parts).encode()


def render_store_text(rows: StoreRows, read_s: float) -> bytes:
    """The store's families for ``rows`` (read in ``read_s`` seconds)."""
    out = TextExposition()
    out.single("tasktree_store_up", "gauge", UP_HELP, 1)
    if rows.created_s is not None:
        out.single(
            "tasktree_store_created_timestamp_seconds", "gauge", CREATED_HELP, rows.created_s
        )
    labels = _job_labels(rows)
    _write_totals(out, rows.totals, labels)
    _write_job_times(out, rows.jobs)
    out.family(OLDEST_LIVE_RUN, "gauge", OLDEST_LIVE_RUN_HELP)
    for job, start_ns in rows.live_runs:
        out.sample(OLDEST_LIVE_RUN, _job(job), start_ns / 1e9)
    _write_live(out, labels, rows.live)
    _write_missing(out, rows.missing)
    _write_job_cap(out, rows)
    _write_ingest(out, rows, read_s)
    return out.render()


def render_store_down() -> bytes:
    """The store's families when PostgreSQL could not be read: that alone, no stale values."""
    out = TextExposition()
    out.single("tasktree_store_up", "gauge", UP_HELP, 0)
    return out.render()


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _job(job: str) -> str:
    return f'job_name="{_label(job)}"'


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return floatToGoString(value)


def _job_labels(rows: StoreRows) -> list[str]:
    """Every ``job_name`` the page shows (``OTHER`` too, once a job is folded into it): each has
    its running and stalled gauges and its run counters, at 0 when there is nothing to count."""
    labels = {row[0] for row in rows.totals} | {row[0] for row in rows.jobs}
    labels |= {row[0] for row in rows.live}
    if rows.folded_jobs:
        labels.add(OTHER)
    return sorted(labels)


def _write_totals(out: TextExposition, rows: list[tuple], job_labels: list[str]) -> None:
    """The counters and histograms of finished tasks and runs.  Both status series of each
    counter exist as soon as its job (for runs) or its job and task name (for tasks) is known,
    at 0 until a task ends so: ``increase()`` then sees the first failure, which a series born
    at 1 would hide."""
    tasks: dict[tuple[str, str], dict[int, int]] = {}
    runs: dict[str, dict[int, int]] = {job: {} for job in job_labels}
    task_hist: dict[str, Total] = {}
    run_hist: dict[str, Total] = {}
    for job, run, name, status, finished, duration_sum, buckets in rows:
        total = Total(finished, duration_sum, list(buckets))
        if run:
            runs.setdefault(job, {})[status] = finished
            _merge_into(run_hist, f"{_job(job)},", total)
        else:
            tasks.setdefault((job, name), {})[status] = finished
            _merge_into(task_hist, f'{_job(job)},task="{_label(name)}",', total)
    out.family("tasktree_tasks_finished_total", "counter", TASKS_FINISHED_HELP)
    for (job, name), by_status in sorted(tasks.items()):
        for status, label in _STATUS_LABEL.items():
            out.sample(
                "tasktree_tasks_finished_total",
                f'{_job(job)},status="{label}",task="{_label(name)}"',
                by_status.get(status, 0),
            )
    out.family(
        "tasktree_runs_finished_total",
        "counter",
        "Runs (root tasks) that finished, by job and status.",
    )
    for job, by_status in sorted(runs.items()):
        for status, label in _STATUS_LABEL.items():
            out.sample(
                "tasktree_runs_finished_total",
                f'{_job(job)},status="{label}"',
                by_status.get(status, 0),
            )
    out.histogram(
        "tasktree_task_duration_seconds",
        "How long finished tasks took, by job and task name.",
        task_hist,
    )
    out.histogram(
        "tasktree_run_duration_seconds",
        "How long finished runs (root tasks) took, by job.",
        run_hist,
    )


def _merge_into(totals: dict[str, Total], key: str, total: Total) -> None:
    if key in totals:
        totals[key].merge(total)
    else:
        totals[key] = total


def _write_job_times(out: TextExposition, jobs: list[tuple]) -> None:
    for i, (name, help_text) in enumerate(JOB_TIMES):
        out.family(name, "gauge", help_text)
        for job, *stamps in jobs:
            if stamps[i] is not None:
                out.sample(name, _job(job), stamps[i] / 1e9)


def _write_live(out: TextExposition, job_labels: list[str], live: list[tuple]) -> None:
    """Running and stalled tasks of every job shown (0 when none), and when the latest stall
    began."""
    counts = {(job, status): n for job, status, n, _ in live}
    for status, name, help_text in LIVE_GAUGES:
        out.family(name, "gauge", help_text)
        for job in job_labels:
            out.sample(name, _job(job), counts.get((job, status), 0))
    name = "tasktree_tasks_stalled_last_heartbeat_timestamp_seconds"
    out.family(
        name,
        "gauge",
        "The newest last heartbeat among the job's stalled tasks (Unix time): "
        "when the latest stall began.",
    )
    for job, status, _, newest in live:
        if status == st.STALLED and newest is not None:
            out.sample(name, _job(job), newest / 1e9)


def _write_missing(out: TextExposition, missing: list[tuple]) -> None:
    name = "tasktree_tasks_missing_parent"
    out.family(
        name,
        "gauge",
        "Placeholders for parent tasks that were named by a child but not (yet) received, by job.",
    )
    for job, n in missing:
        out.sample(name, _job(job), n)


def _write_job_cap(out: TextExposition, rows: StoreRows) -> None:
    if rows.max_jobs is None:
        return
    out.single(
        "tasktree_metrics_max_jobs",
        "gauge",
        "Jobs with their own job_name in /metrics at most (TASKTREE_METRICS_MAX_JOBS).",
        rows.max_jobs,
    )
    out.single(
        "tasktree_metrics_folded_jobs",
        "gauge",
        'Jobs beyond TASKTREE_METRICS_MAX_JOBS, counted as job_name="__other__": no job alert'
        " watches them (they have no timestamps of their own).",
        rows.folded_jobs,
    )


def _write_ingest(out: TextExposition, rows: StoreRows, read_s: float) -> None:
    out.single(
        "tasktree_ingest_backlog_spans",
        "gauge",
        "Spans received and stored but not yet folded into the tree.",
        int(rows.backlog or 0),
    )
    oldest = rows.oldest_received_ns
    lag = 0.0 if oldest is None else max(0.0, rows.now_s - oldest / 1e9)
    out.single(
        "tasktree_ingest_lag_seconds",
        "gauge",
        "Age of the oldest received span not yet folded "
        "into the tree (0 when the tree is up to date).",
        lag,
    )
    out.single(
        "tasktree_quarantined_spans",
        "gauge",
        "Spans set aside because folding them failed (`tasktree quarantine` lists them and why).",
        rows.quarantined,
    )
    out.single(
        "tasktree_metrics_store_read_seconds",
        "gauge",
        "How long the last read of the PostgreSQL-backed metrics took.",
        read_s,
    )
