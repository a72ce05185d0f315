"""Real Prometheus, promtool and node for the observability tests (design.md §6), and the workload.

No pytest fixtures here (they are in ``conftest.py``): ``Prometheus`` starts Debian's server on a
free loopback port in a temporary directory and is stopped by PID; ``send_workload`` sends
demo-like runs with the real OpenTelemetry SDK.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "prometheus" / "rules"
# The job expectations a site writes for its own jobs: the shipped file only has an example,
# commented out; its live copy declares the workload's demo-etl.
EXAMPLE_RULES_DIR = ROOT / "prometheus" / "tests" / "rules"


def rule_files() -> list[Path]:
    """The shipped rules and the example job expectations, as a site runs them."""
    return sorted(RULES_DIR.glob("*.yml")) + sorted(EXAMPLE_RULES_DIR.glob("*.yml"))
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
SCHEMA_CHECK_DIR = Path(__file__).resolve().parent / "schema-check"
APT_PACKAGES = ("prometheus", "prometheus-alertmanager")
RUNBOOK_BASE_URL = "https://runbooks.example/tasktree"  # the external label the alerts link from


def unavailable(reason: str) -> None:
    """Skip, or under ``CI=true`` fail: a missing component is never silently skipped in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def wait_until(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_prometheus_tools() -> list[str]:
    return [t for t in ("prometheus", "promtool", "amtool") if shutil.which(t) is None]


def install_prometheus_tools() -> None:
    """``apt-get update && apt-get install -y prometheus prometheus-alertmanager`` (needs root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
        check=True,
        env=env,
        capture_output=True,
    )


def rules_with_short_for(target: Path, for_: str = "2s") -> Path:
    """Copy the rule files to ``target`` with every alert's ``for`` shortened (for live tests)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in rule_files():
        text = re.sub(r"^(\s+for:\s*)\S+\s*$", rf"\g<1>{for_}", path.read_text(), flags=re.M)
        (target / path.name).write_text(text)
    return target


class Prometheus:
    """Debian's ``prometheus`` scraping ``targets`` (job "tasktree") every ``interval``."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rules_dir: Path | None = None,
        interval: str = "1s",
        bearer: str | None = None,
    ):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        job = {
            "job_name": "tasktree",
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": targets}],
        }
        if bearer:
            job["authorization"] = {"type": "Bearer", "credentials": bearer}
        config = {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": "1s",
                "external_labels": {"runbook_base_url": RUNBOOK_BASE_URL},
            },
            "rule_files": [str(rules_dir / "*.yml")] if rules_dir else [],
            "scrape_configs": [job],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not start:\n{self.log_path.read_text()[-3000:]}")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self._log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM a server the tests started, SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- what the dashboards and rules contain --------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def _all_panels(dashboard: dict):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # rows


def _is(ds: dict | None, kind: str) -> bool:
    return bool(ds) and ds.get("type") == kind


def dashboard_queries(kind: str) -> list[tuple[str, str]]:
    """(id, query) of every target and query variable of datasource ``kind`` in every dashboard."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in _all_panels(dashboard):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource")
                text = target.get("expr") if kind == "prometheus" else target.get("rawSql")
                if _is(ds, kind) and text:
                    found.append((f"{name}:{panel['title']}:{target['refId']}", text))
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query" and _is(var.get("datasource"), kind):
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                found.append((f"{name}:variable {var['name']}", query))
    return found


def rule_expressions() -> list[tuple[str, str, dict]]:
    """(id, expr, rule) of every rule in prometheus/rules and the example expectations."""
    found = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                labels = ",".join(f"{k}={v}" for k, v in sorted(rule.get("labels", {}).items()))
                found.append((f"{path.name}:{name}{{{labels}}}", rule["expr"], rule))
    return found


def recorded_names() -> set[str]:
    return {rule["record"] for _, _, rule in rule_expressions() if "record" in rule}


_SELECTOR = re.compile(
    r"(?<![\w:])((?:job_name:)?tasktree_[\w:]*|up|process_start_time_seconds)"
    r"(?![\w:(])\s*(\{[^}]*\})?"
)


def selectors(expr: str) -> list[str]:
    """The series selectors of tasktree's own metrics (plus ``up``) in a PromQL expression."""
    return sorted({name + (matchers or "") for name, matchers in _SELECTOR.findall(expr)})


def metric_names(expr: str) -> set[str]:
    return {m.split("{")[0] for m in selectors(expr)}


def promql_with_variables(expr: str) -> str:
    """A dashboard expression as Grafana would send it (all values of every variable)."""
    for var in ("$__rate_interval", "$__interval"):
        expr = expr.replace(var, "2m")
    expr = expr.replace("$__range", "10m")
    return re.sub(r"\$\{?(job|host|scrape_job|instance)\b\}?", ".*", expr)


def sql_quote(value: str) -> str:
    """A string as Grafana's ``sqlstring`` format writes it: in single quotes, ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


def sql_with_variables(
    query: str, variables: dict[str, str | list[str]], from_ns: int, to_ns: int
) -> str:
    """A dashboard SQL query with the variables and macros Grafana would expand.

    Variables go into SQL only as ``${name:sqlstring}`` (each value quoted, ``'`` doubled, joined
    by commas, as Grafana formats one or several values); anything else is left for the assert.
    """

    def sqlstring(match: re.Match) -> str:
        value = variables[match.group(1)]
        return ",".join(sql_quote(v) for v in ([value] if isinstance(value, str) else value))

    query = (
        re.sub(r"\$\{(\w+):sqlstring\}", sqlstring, query)
        .replace("$__unixEpochNanoFrom()", str(from_ns))
        .replace("$__unixEpochNanoTo()", str(to_ns))
    )
    unknown = re.findall(r"\$\{?\w+(?::\w+)?", query)
    assert not unknown, f"the test does not expand {unknown}: add them to sql_with_variables"
    return query


def exported_names(exposition: str) -> set[str]:
    """Every sample name a /metrics page can produce (from its TYPE lines)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"),
            }.get(kind, ())
            names.update(name + s for s in suffixes)
    return names
