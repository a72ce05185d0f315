"""Conventions of the provisioned dashboards, checked on the files (issue 13, "Dashboards"):
variables reach SQL only through Grafana's ``sqlstring`` format, the jobs dashboard's SQL follows
``$job``, no PromQL names the Prometheus scrape job, the dashboards are read-only, no panel mixes
units; and the README's metrics table names every metric of the ``metrics`` package.

That the queries run (with the variables expanded as Grafana does) is checked against a real
Prometheus and PostgreSQL in ``test_prometheus_live.py``.
"""

from __future__ import annotations

import re

import obs_support as obs
import pytest
import yaml

DASHBOARDS = obs.dashboards()
SQL = "grafana-postgresql-datasource"

# a template variable, not one of Grafana's macros ($__from, $__unixEpochNanoFrom() ...)
_VARIABLE = re.compile(r"\$(?:\{(?!__)(\w+)(?::(\w+))?\}|(?!__)(\w+))")


def _variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _queries(name: str, kind: str) -> list[tuple[str, str]]:
    """(where, query) of every target and query variable of datasource ``kind`` in one dashboard."""
    prefix = f"{name}:"
    return [
        (w.removeprefix(prefix), q) for w, q in obs.dashboard_queries(kind) if w.startswith(prefix)
    ]


def _sql_texts(name: str) -> list[tuple[str, str]]:
    return _queries(name, SQL)


def _promql(name: str) -> list[tuple[str, str]]:
    return _queries(name, "prometheus")


# -- variables in SQL ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_goes_into_sql_through_the_sqlstring_format(name):
    dashboard = DASHBOARDS[name]
    variables = _variables(dashboard)
    for where, sql in _sql_texts(name):
        for braced, fmt, bare in _VARIABLE.findall(sql):
            assert braced and fmt == "sqlstring", (
                f"{name}:{where}: ${{{braced or bare}}} must be written ${{{braced or bare}"
                f":sqlstring}} (quoted, quotes doubled), not pasted raw"
            )
            assert braced in variables, f"{name}:{where}: no variable {braced}"
            # Grafana leaves a custom "All" value unformatted: `.*` would reach the SQL raw
            assert "allValue" not in variables[braced], (
                f"{name}: variable {braced} is used in SQL, so it must not have a custom allValue"
            )


def test_the_sqlstring_check_catches_a_raw_variable():
    raw = "SELECT 1 FROM runs WHERE trace_id = decode('${trace_id}', 'hex') AND job = '$job'"
    assert [(b or n, f) for b, f, n in _VARIABLE.findall(raw)] == [("trace_id", ""), ("job", "")]
    assert _VARIABLE.findall("WHERE x BETWEEN $__unixEpochNanoFrom() AND $__timeFrom()") == []


def test_every_sql_panel_of_the_jobs_dashboard_follows_the_job_variable():
    dashboard = DASHBOARDS["tasktree-jobs.json"]
    job = _variables(dashboard)["job"]
    assert job["multi"] and job["includeAll"]  # several jobs, or all of them
    targets = [(w, s) for w, s in _sql_texts("tasktree-jobs.json") if not w.startswith("variable")]
    assert targets
    for where, sql in targets:
        assert re.search(r"\br\.job IN \(\$\{job:sqlstring\}\)", sql), (
            f"{where}: the runs are not filtered by $job"
        )


def test_the_job_variable_lists_every_job_of_the_metrics_other_too():
    """``$job`` = All is the values the variable lists (no ``allValue``: the SQL panels need each
    one quoted), so the metric it lists them from must carry every ``job_name`` /metrics shows:
    ``__other__`` too, or the jobs beyond TASKTREE_METRICS_MAX_JOBS drop out of every panel."""
    from prometheus_client.parser import text_string_to_metric_families

    from tasktree.exporter.metrics.exposition import StoreRows, render_store_text
    from tasktree.exporter.metrics.store_metrics import bounded_jobs
    from tasktree.exporter.tree import status as st

    query = _variables(DASHBOARDS["tasktree-jobs.json"])["job"]["query"]["query"]
    listed_from = re.fullmatch(r"label_values\((\w+), job_name\)", query)
    assert listed_from, query
    stamp = 1_700_000_000 * 10**9
    rows = StoreRows(  # a cap of 2: one job with totals, one idle, two beyond the cap
        totals=[("a-kept", True, "", st.ERROR, 1, 2.0, [0] * 4 + [1] + [0] * 12)],
        jobs=[(job, stamp, None, None, stamp) for job in ("a-kept", "b-idle", "c-over", "d-over")],
        live=[("c-over", st.RUNNING, 1, stamp)],
        missing=[],
        oldest_received_ns=None,
        backlog=None,
        now_s=stamp / 1e9,
    )
    text = render_store_text(bounded_jobs(rows, max_jobs=2, job_ttl_s=0), read_s=0.0).decode()
    jobs_by_metric: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "job_name" in sample.labels:
                jobs_by_metric.setdefault(family.name, set()).add(sample.labels["job_name"])
    every = set().union(*jobs_by_metric.values())
    assert every == {"a-kept", "b-idle", "__other__"}
    assert jobs_by_metric.get(listed_from.group(1)) == every


def test_the_jobs_dashboard_shows_the_runs_of_the_jobs_beyond_the_cap_under_other():
    for where, sql in _sql_texts("tasktree-jobs.json"):
        if "${job:sqlstring}" in sql:
            assert "'__other__' IN (${job:sqlstring})" in sql, where
            assert "NOT EXISTS (SELECT 1 FROM metric_totals m WHERE m.job = r.job)" in sql, where


# -- PromQL and the Prometheus scrape job --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_promql_names_the_prometheus_scrape_job(name):
    for where, expr in _promql(name):
        fixed = re.findall(r"(?<![\w])(job|instance)\s*(=~|!~|=|!=)\s*\"(?!\$)([^\"]*)\"", expr)
        assert not fixed, f"{name}:{where}: hard-coded {fixed}; use $scrape_job / $instance"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboards_about_tasktree_processes_pick_the_scrape_job_and_instance(name):
    dashboard = DASHBOARDS[name]
    exprs = _promql(name)
    if not any(re.search(r"(?<![\w:])up\b", e) for _, e in exprs):
        return  # per-process dashboards (they read `up`) choose the process; others aggregate
    variables = _variables(dashboard)
    assert {"scrape_job", "instance"} <= set(variables), name
    for var in ("scrape_job", "instance"):
        assert variables[var]["multi"] and variables[var]["includeAll"], var
        assert variables[var]["allValue"] == ".*", var
    assert "$scrape_job" in variables["instance"]["query"]["query"]
    for where, expr in exprs:
        if where.startswith("variable"):
            continue
        for selector in obs.selectors(expr):
            assert 'job=~"$scrape_job"' in selector and 'instance=~"$instance"' in selector, (
                f"{name}:{where}: {selector} does not follow $scrape_job and $instance"
            )


# -- read-only provisioning ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_provisioned_dashboards_are_not_editable(name):
    assert DASHBOARDS[name]["editable"] is False


def test_the_provisioning_forbids_saving_changes_from_the_ui():
    provisioning = obs.ROOT / "grafana" / "provisioning" / "dashboards" / "tasktree.yml"
    for provider in yaml.safe_load(provisioning.read_text())["providers"]:
        assert provider["allowUiUpdates"] is False
        assert provider["disableDeletion"] is True


# -- units -----------------------------------------------------------------------------------------


def _dimension(expr: str) -> str:
    """What one PromQL expression measures: seconds, a ratio, bytes or a count."""
    names = obs.metric_names(expr)
    if any(n.endswith("_seconds_total") for n in names) and re.search(r"\b(i?rate)\(", expr):
        return "ratio"  # CPU seconds per second
    if any("_seconds" in n for n in names):
        return "seconds"
    if any(n.endswith("_bytes") for n in names):
        return "bytes"
    return "count"


_UNITS = {"seconds": {"s"}, "ratio": {"percentunit"}, "bytes": {"bytes"}}


def _units(panel: dict) -> set[str]:
    config = panel.get("fieldConfig", {})
    units = {config.get("defaults", {}).get("unit")}
    for override in config.get("overrides", []):
        units |= {p["value"] for p in override["properties"] if p["id"] == "unit"}
    return units - {None}


def _prometheus_panels() -> list:
    found = []
    for name, dashboard in sorted(DASHBOARDS.items()):
        for panel in obs._all_panels(dashboard):
            exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            if exprs:
                found.append(pytest.param(panel, exprs, id=f"{name}:{panel['title']}"))
    return found


@pytest.mark.parametrize("panel,exprs", _prometheus_panels())
def test_no_panel_mixes_units(panel, exprs):
    dimensions = {_dimension(e) for e in exprs}
    assert len(dimensions) == 1, f"{panel['title']}: one axis for {dimensions}"
    units = _units(panel)
    assert len(units) <= 1, f"{panel['title']}: units {units} in one panel"
    (dimension,) = dimensions
    allowed = _UNITS.get(dimension, {"short", "none", "bool_yes_no"})
    assert units <= allowed, f"{panel['title']}: unit {units} for {dimension}"
    if dimension != "count":
        assert units, f"{panel['title']}: {dimension} without a unit"


def test_the_unit_check_catches_seconds_and_spans_in_one_panel():
    panel = {
        "title": "Lag and backlog",
        "fieldConfig": {
            "defaults": {},
            "overrides": [{"matcher": {}, "properties": [{"id": "unit", "value": "s"}]}],
        },
    }
    exprs = ["max(tasktree_ingest_lag_seconds)", "max(tasktree_ingest_backlog_spans)"]
    with pytest.raises(AssertionError, match="one axis"):
        test_no_panel_mixes_units(panel, exprs)


# -- the README's metrics table --------------------------------------------------------------------


def _readme_metric_names() -> set[str]:
    """The metric names of the README's table, with `{a,b}` and `…_x` spelt out."""
    text = (obs.ROOT / "README.md").read_text()
    table = text.split("| metric | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines():
        cell = row.split("|")[1] if row.startswith("|") else ""
        full = re.findall(r"`(tasktree_[\w{},]+)`", cell)
        for name in full:
            head, _, rest = name.partition("{")
            parts, _, tail = rest.partition("}")
            names |= {head + p + tail for p in parts.split(",")} if rest else {name}
        if full:
            prefix = full[0].rsplit("_", 1)[0]
            names |= {prefix + s for s in re.findall(r"`…(_\w+)`", cell)}
    return names


def test_the_readme_metrics_table_names_every_metric_of_the_metrics_package():
    package = obs.ROOT / "exporter" / "src" / "tasktree" / "exporter" / "metrics"
    source = "".join(path.read_text() for path in sorted(package.glob("*.py")))
    exported = set(re.findall(r'"(tasktree_[a-z_]+)"', source))
    documented = _readme_metric_names()
    assert {"tasktree_db_pool_max_connections", "tasktree_job_last_start_timestamp_seconds"} <= (
        documented
    )
    missing = {n for n in exported if n not in documented and n + "_total" not in documented}
    assert not missing, f"README's metrics table lacks {sorted(missing)}"
