"""Debian's Prometheus scrapes a real ``tasktree serve`` (with a real docker engine) that ingested a
demo-like workload: /metrics passes ``promtool check metrics``, every PromQL expression of every
dashboard returns data, every rule evaluates over series that exist, every SQL query of the
dashboards returns rows, and a job killed with SIGKILL makes TasktreeTasksStalled fire.

Short intervals: scrapes every 2 s, rules every 1 s with every ``for`` cut to 2 s,
``--stall-after 2``.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import obs_support as obs
import obs_workload as wl
import psycopg
import pytest
from obs_support import unavailable, wait_until
from prometheus_client.parser import text_string_to_metric_families

DOCKER_METRICS = {
    "tasktree_docker_host_up",
    "tasktree_container_state",
    "tasktree_container_cpu_seconds_total",
    "tasktree_container_memory_bytes",
    "tasktree_container_restarts_total",
}


def _root_conftest(request, name: str):
    for plugin in request.config.pluginmanager.get_plugins():
        if hasattr(plugin, name) and hasattr(plugin, "TasktreeServer"):
            return getattr(plugin, name)
    raise RuntimeError(f"the repository's conftest.py has no {name}")


def _docker_lab():
    path = obs.ROOT / "exporter" / "tests" / "integration" / "docker_lab.py"
    spec = importlib.util.spec_from_file_location("tasktree_docker_lab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Stack:
    server: object
    prometheus: obs.Prometheus
    database_url: str
    failing_trace: str
    docker: object | None
    started_ns: int
    stopped: list = field(default_factory=list)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.server.web + "/metrics", timeout=30) as resp:
            return resp.read().decode()


def _start_docker(tmp: Path):
    """One docker engine with a steady container and one that crashes and restarts; or None."""
    lab = _docker_lab()
    if lab.missing_tools() and os.geteuid() == 0:
        try:
            lab.install_tools()
        except subprocess.CalledProcessError:
            pass
    if lab.missing_tools() or os.geteuid() != 0:
        unavailable_reason = f"docker engine unavailable: missing {lab.missing_tools()} or not root"
        if os.environ.get("CI") == "true":
            pytest.fail(unavailable_reason)
        return None
    engine = lab.Dockerd("obs")
    with engine.client() as client:
        client.import_image(
            src=io.BytesIO(lab.busybox_tar()),
            repository="obs-busybox",
            tag="1",
            changes=['CMD ["/bin/sh"]', "ENV PATH=/bin"],
        )
        for name, command, policy in (
            ("steady", ["sleep", "3600"], None),
            ("crashy", ["sh", "-c", "sleep 1; exit 3"], {"Name": "always"}),
        ):
            host_config = client.create_host_config(network_mode="none", restart_policy=policy)
            container = client.create_container(
                "obs-busybox:1", command, name=name, host_config=host_config
            )
            client.start(container)
    return engine


@pytest.fixture(scope="module")
def stack(request, prometheus_tools, database_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("obs-stack")
    _root_conftest(request, "_truncate")(database_url)
    engine = _start_docker(tmp)
    env = {"TASKTREE_DOCKER_TIMEOUT": "1.5", "TASKTREE_DOCKER_CACHE_TTL": "1"}
    if engine is not None:
        env["TASKTREE_DOCKER_HOSTS"] = f"lab={engine.url}"
    server_cls = _root_conftest(request, "TasktreeServer")
    server = server_cls(database_url, tmp, ("--stall-after", "2"), env)
    target = server.web.removeprefix("http://")
    prometheus = obs.Prometheus(
        tmp / "prometheus", [target], obs.rules_with_short_for(tmp / "rules"), interval="2s"
    )
    try:
        wait_until(lambda: prometheus.query('up{job="tasktree"} == 1'), 30, "the first scrape")
        endpoint = server.otlp_http + "/v1/traces"
        started_ns = time.time_ns()
        failing = None
        for _ in range(2):  # two rounds, a few scrapes apart: counters rise inside rate() windows
            wl.send_run(endpoint, "obs-etl", fail=False)
            failing = wl.send_run(endpoint, "obs-failing", fail=True)
            server.wait_folded()
            time.sleep(5)
        wl.send_orphan(endpoint)
        wl.send_running_snapshot(endpoint)
        wl.send_running_snapshot(endpoint, job="obs-running", beat_ahead_s=55)  # runs ~a minute
        server.wait_folded()
        wait_until(
            lambda: prometheus.query("tasktree_job_oldest_running_run_start_timestamp_seconds"),
            30,
            "a run with a task running now to show in Prometheus",
        )
        # the snapshot stalls after 2 s; then a few scrapes and rule evaluations
        wait_until(
            lambda: prometheus.query('tasktree_tasks_stalled{job_name="obs-stalling"} == 1'),
            30,
            "the running snapshot to show stalled in Prometheus",
        )
        if engine is not None:
            wait_until(
                lambda: prometheus.query("increase(tasktree_container_restarts_total[2m]) > 0"),
                60,
                "a container restart to show in Prometheus",
            )
        time.sleep(4)
        yield Stack(server, prometheus, database_url, failing, engine, started_ns)
    finally:
        prometheus.stop()
        server.stop()
        if engine is not None:
            engine.stop()


# -- /metrics ---------------------------------------------------------------------------------


def test_promtool_check_metrics_passes_on_the_metrics_page(stack):
    done = subprocess.run(
        ["promtool", "check", "metrics"],
        input=stack.metrics_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_a_dashboard_or_rule_names_is_exported(stack):
    exported = obs.exported_names(stack.metrics_text()) | obs.recorded_names() | {"up"}
    exprs = [q for _, q in obs.dashboard_queries("prometheus")] + [
        e for _, e, _ in obs.rule_expressions()
    ]
    named = set().union(*(obs.metric_names(e) for e in exprs))
    if stack.docker is None:
        named -= DOCKER_METRICS
    assert named - exported == set()
    assert len(named) > 20  # the extraction found the metrics


def test_job_series_show_the_workload(stack):
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(stack.metrics_text())
        for s in family.samples
    }

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("tasktree_runs_finished_total", job_name="obs-etl", status="ok") == 2
    assert value("tasktree_runs_finished_total", job_name="obs-failing", status="error") == 2
    assert (
        value(
            "tasktree_tasks_finished_total",
            job_name="obs-failing",
            status="error",
            task="transform-chunk",
        )
        == 2
    )
    assert value("tasktree_tasks_stalled", job_name="obs-stalling") == 1
    assert value("tasktree_tasks_missing_parent", job_name="obs-orphans") == 1
    assert (
        value(
            "tasktree_task_duration_seconds_bucket",
            job_name="obs-etl",
            task="extract-chunk",
            le="86400.0",
        )
        == 6
    )
    assert (
        value("tasktree_task_duration_seconds_count", job_name="obs-etl", task="extract-chunk") == 6
    )


# -- PromQL of the dashboards and the rules ---------------------------------------------------


@pytest.mark.parametrize(
    "where,expr",
    obs.dashboard_queries("prometheus"),
    ids=[i for i, _ in obs.dashboard_queries("prometheus")],
)
def test_every_dashboard_promql_expression_returns_data(stack, where, expr):
    if stack.docker is None and obs.metric_names(expr) & DOCKER_METRICS:
        unavailable("no docker engine for the container metrics")
    variable = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr.strip())
    if variable:  # a Grafana variable: Grafana asks the label values API, as here
        selector, label = variable.groups()
        selector = obs.promql_with_variables(selector)  # a variable may depend on another
        values = stack.prometheus.api(f"label/{label}/values", **{"match[]": selector})
        assert values, f"{where}: no values of {label} in {selector}"
        return
    result = stack.prometheus.query(obs.promql_with_variables(expr))
    assert result, f"{where}: no data for {obs.promql_with_variables(expr)}"
    values = [float(r["value"][1]) for r in result]
    assert not all(math.isnan(v) for v in values), f"{where}: only NaN"


@pytest.mark.parametrize(
    "where,expr,rule", obs.rule_expressions(), ids=[i for i, _, _ in obs.rule_expressions()]
)
def test_every_rule_evaluates_over_series_that_exist(stack, where, expr, rule):
    stack.prometheus.query(expr)  # valid PromQL that Prometheus evaluates (raises otherwise)
    if "record" in rule:
        assert stack.prometheus.query(rule["record"]), f"{where}: the recording rule yields nothing"
    for selector in obs.selectors(expr):
        if stack.docker is None and selector.split("{")[0] in DOCKER_METRICS:
            continue
        assert stack.prometheus.query(f"count({selector})"), f"{where}: {selector} has no series"


def _active(prometheus, alertname: str, **labels) -> list[dict]:
    return [
        a
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == alertname
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def test_run_failed_alert_fires_for_the_failing_job_only(stack):
    wait_until(
        lambda: _active(stack.prometheus, "TasktreeRunFailed", job_name="obs-failing"),
        30,
        "TasktreeRunFailed for obs-failing",
    )
    assert not _active(stack.prometheus, "TasktreeRunFailed", job_name="obs-etl")


def test_a_job_killed_with_sigkill_makes_the_stalled_alert_fire(stack):
    job = "obs-killed"
    child = subprocess.Popen(
        wl.killed_job_command(stack.server.otlp_http + "/v1/traces", job),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().startswith("READY")
        time.sleep(5)  # more than --stall-after and the 2 s `for`: heartbeats keep it running
        assert stack.prometheus.query(f'tasktree_tasks_running{{job_name="{job}"}} == 1')
        assert not _active(stack.prometheus, "TasktreeTasksStalled", job_name=job)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        alert = wait_until(
            lambda: _active(stack.prometheus, "TasktreeTasksStalled", job_name=job),
            60,
            "TasktreeTasksStalled to fire for the killed job",
        )
        assert alert[0]["labels"] == {
            "alertname": "TasktreeTasksStalled",
            "job_name": job,
            "severity": "warning",
        }
        assert (
            alert[0]["annotations"]["runbook_url"] == obs.RUNBOOK_BASE_URL + "#tasktreetasksstalled"
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


# -- SQL of the dashboards --------------------------------------------------------------------


@pytest.mark.parametrize(
    "where,query",
    obs.dashboard_queries("grafana-postgresql-datasource"),
    ids=[i for i, _ in obs.dashboard_queries("grafana-postgresql-datasource")],
)
def test_every_dashboard_sql_query_returns_rows(stack, where, query):
    variables = {
        "trace_id": stack.failing_trace,
        # several jobs, as "All" or a multi-value pick sends them; one quoted as Grafana does
        "job": ["obs-etl", "obs-failing", "it's; not a job"],
    }
    sql = obs.sql_with_variables(query, variables, stack.started_ns - 3600 * 10**9, time.time_ns())
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")  # Grafana's role only reads
        rows = conn.execute(sql).fetchall()
    assert rows, f"{where}: no rows"


@pytest.mark.parametrize(
    "where,query",
    [q for q in obs.dashboard_queries("grafana-postgresql-datasource") if "${job:" in q[1]],
    ids=[i for i, q in obs.dashboard_queries("grafana-postgresql-datasource") if "${job:" in q[1]],
)
def test_sql_panels_show_only_the_runs_of_the_jobs_picked_in_job(stack, where, query):
    def jobs(picked: list[str]) -> set[str]:
        sql = obs.sql_with_variables(
            query,
            {"trace_id": stack.failing_trace, "job": picked},
            stack.started_ns - 3600 * 10**9,
            time.time_ns(),
        )
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            cursor = conn.execute(sql)
            column = [c.name for c in cursor.description].index("job")
            return {row[column] for row in cursor.fetchall()}

    assert jobs(["obs-failing"]) == {"obs-failing"}
    assert jobs(["obs-etl", "obs-failing"]) <= {"obs-etl", "obs-failing"}
    assert jobs(["no-such-job", "it's"]) == set()


@pytest.mark.parametrize(
    "where,query",
    [q for q in obs.dashboard_queries("grafana-postgresql-datasource") if "${job:" in q[1]],
    ids=[i for i, q in obs.dashboard_queries("grafana-postgresql-datasource") if "${job:" in q[1]],
)
def test_sql_panels_show_the_runs_of_the_jobs_beyond_the_job_cap_under_other(
    clean_store_db, where, query
):
    """``__other__`` in ``$job`` (All lists it) stands for the jobs without series of their own
    (none in ``metric_totals``), as it does in the PromQL panels."""
    now = time.time_ns()
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO runs (trace_id, job, name, status, start_ns, end_ns)"
            " VALUES (%s, %s, 'run', 4, %s, %s)",
            [(bytes([n]) * 16, job, now - n * 10**9, now) for n, job in ((1, "kept"), (2, "over"))],
        )
        conn.execute(
            "INSERT INTO metric_totals VALUES ('kept', true, '', 4, 1, 1.0, %s)", ([0] * 17,)
        )

    def jobs(picked: list[str]) -> set[str]:
        sql = obs.sql_with_variables(query, {"job": picked}, now - 3600 * 10**9, now + 10**9)
        with psycopg.connect(clean_store_db, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            cursor = conn.execute(sql)
            column = [c.name for c in cursor.description].index("job")
            return {row[column] for row in cursor.fetchall()}

    assert jobs(["__other__"]) == {"over"}
    assert jobs(["kept"]) == {"kept"}
    assert jobs(["kept", "__other__"]) == {"kept", "over"}  # All
