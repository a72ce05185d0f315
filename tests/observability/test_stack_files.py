"""The stack's files on their own: promtool rule tests and checks, Alertmanager's config, the
dashboards against Grafana's published schema (npm @grafana/schema with tsc), the dashboards'
conventions, and docker-compose.yml against the Compose specification (no engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import obs_support as obs
import pytest
import yaml
from obs_support import unavailable

PROMETHEUS = obs.ROOT / "prometheus"


def _run(argv, cwd=None, env=None, timeout=300):
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# -- Prometheus and Alertmanager ---------------------------------------------------------------


def test_promtool_rule_unit_tests_pass(prometheus_tools):
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    done = _run(["promtool", "test", "rules", *map(str, tests)], cwd=PROMETHEUS / "tests")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules_and_the_prometheus_config(prometheus_tools):
    done = _run(
        ["promtool", "check", "rules", *map(str, sorted((PROMETHEUS / "rules").glob("*.yml")))]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = _run(
        ["promtool", "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")]
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_checks_the_alertmanager_config(prometheus_tools):
    done = _run(["amtool", "check-config", str(PROMETHEUS / "alertmanager.yml")])
    assert done.returncode == 0, done.stdout + done.stderr


def _alerts():
    return [rule for _, _, rule in obs.rule_expressions() if "alert" in rule]


@pytest.mark.parametrize("rule", _alerts(), ids=[r["alert"] for r in _alerts()])
def test_every_alert_has_for_severity_summary_description_runbook_and_a_unit_test(rule):
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "every alert waits a `for` window"
    assert rule["labels"]["severity"] in ("warning", "critical") or rule["alert"] == "Watchdog"
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = "#" + rule["alert"].lower()
    assert annotations["runbook_url"] == "{{ $externalLabels.runbook_base_url }}" + anchor
    assert f"## {rule['alert']}\n" in (PROMETHEUS / "runbook.md").read_text()
    tests = "".join(p.read_text() for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert f"alertname: {rule['alert']}\n" in tests, "no promtool test for this alert"
    assert re.search(rf"- name: {rule['alert']} fires ", tests), (
        "a test named as a sentence shows it firing"
    )


def test_runbook_links_are_absolute_from_one_base_in_prometheus_yml():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    base = config["global"]["external_labels"]["runbook_base_url"]
    assert re.fullmatch(r"https?://[^\s#]+", base), base
    urls = {rule["annotations"]["runbook_url"] for rule in _alerts()}
    assert {re.sub(r"#\w+$", "", url) for url in urls} == {"{{ $externalLabels.runbook_base_url }}"}


def test_job_alerts_keep_firing_through_a_store_outage():
    job_alerts = {r["alert"]: r for r in _alerts() if "by (job_name)" in r["expr"]}
    assert len(job_alerts) == 6, sorted(job_alerts)
    for name, rule in job_alerts.items():
        assert rule.get("keep_firing_for") == "15m", name  # longer than the inhibitors' `for`


def test_the_default_job_expectations_leave_out_tasktrees_own_docker_job_by_its_name():
    from tasktree.exporter.docker.tracing import JOB

    defaults = [r for r in _alerts() if "* 0 + 93600" in r["expr"]]
    assert {r["alert"] for r in defaults} == {"TasktreeJobNotStarted", "TasktreeJobNotSucceeding"}
    for rule in defaults:
        assert f'{{job_name!="{JOB}"}}) * 0 + 93600' in rule["expr"], rule["alert"]


def test_no_job_is_declared_expected_in_the_shipped_expectations():
    """A job declared there that never runs pages someone: the file ships its example commented
    out (live only in tests/, for the rules' tests)."""
    shipped = yaml.safe_load((PROMETHEUS / "rules" / "job-expectations.yml").read_text())
    assert [g["rules"] for g in shipped["groups"]] == [[]]


# -- Grafana ------------------------------------------------------------------------------------


def _tsc(schema_check_dir: Path, dashboards_dir: Path):
    done = _run(
        ["node", "generate.mjs"], cwd=schema_check_dir, env={"DASHBOARDS_DIR": str(dashboards_dir)}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return _run(
        [str(schema_check_dir / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=schema_check_dir,
    )


def test_every_dashboard_type_checks_against_grafanas_published_schema(schema_check_dir, tmp_path):
    done = _tsc(schema_check_dir, obs.DASHBOARDS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list((schema_check_dir / "generated").glob("*.ts"))) == len(obs.dashboards())


def test_the_schema_check_catches_a_misspelt_field(schema_check_dir, tmp_path):
    broken = json.loads((obs.DASHBOARDS_DIR / "tasktree-jobs.json").read_text())
    broken["panels"][0]["gridPos"]["width"] = broken["panels"][0]["gridPos"].pop("w")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    done = _tsc(schema_check_dir, tmp_path)
    try:
        assert done.returncode != 0 and "width" in done.stdout, done.stdout
    finally:
        _tsc(schema_check_dir, obs.DASHBOARDS_DIR)  # leave generated/ as the real dashboards


@pytest.mark.parametrize("name", sorted(obs.dashboards()))
def test_dashboards_have_a_stable_uid_datasource_variables_and_links_to_tasktree(name):
    dashboard = obs.dashboards()[name]
    assert dashboard["uid"] == name.removesuffix(".json")
    assert dashboard.get("id") is None  # provisioned dashboards get their id from Grafana
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "tasktree_url" in variables
    kinds = {v["query"] for v in variables.values() if v["type"] == "datasource"}
    for panel in dashboard["panels"]:
        uid = panel["datasource"]["uid"]
        assert uid in ("${datasource}", "${pg}"), (
            f"{panel['title']}: datasource {uid} is not a variable"
        )
        assert variables[uid[2:-1]]["query"] == panel["datasource"]["type"], panel["title"]
        links = [link["url"] for link in panel.get("links", [])] + [
            link["url"] for link in panel["fieldConfig"]["defaults"].get("links", [])
        ]
        assert all(url.startswith("${tasktree_url}/") for url in links)
    assert kinds
    everything = json.dumps(dashboard)
    if "grafana-postgresql-datasource" in kinds:  # SQL panels open the run's tree
        assert "${tasktree_url}/runs/" in everything


def test_the_dashboards_status_codes_are_tasktrees():
    """The SQL panels name statuses by their codes (tree.status, the one home): each code they
    label, and each count they name, must be that status's."""
    from tasktree.exporter.tree import status as st

    sql = [
        target["rawSql"]
        for dashboard in obs.dashboards().values()
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "rawSql" in target
    ]
    labelled = [
        (int(code), label)
        for text in sql
        for code, label in re.findall(r"WHEN (\d+) THEN '(\w+)'", text)
        + re.findall(r"FILTER \(WHERE \w+\.status = (\d+)\) AS (\w+)", text)
    ]
    assert len(labelled) >= 8  # the checks found the panels' statuses
    assert [(code, st.name(code)) for code, _ in labelled] == labelled
    codes = {int(c) for text in sql for c in re.findall(r"status (?:= |IN \()(\d+)", text)}
    assert codes <= {int(code) for code in st.Status}


def test_grafana_provisioning_defines_both_datasources_and_loads_the_dashboards():
    provisioning = obs.ROOT / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "tasktree.yml").read_text())[
        "datasources"
    ]
    assert {d["type"] for d in datasources} == {"prometheus", "grafana-postgresql-datasource"}
    providers = yaml.safe_load((provisioning / "dashboards" / "tasktree.yml").read_text())[
        "providers"
    ]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/tasktree"


# -- docker compose -----------------------------------------------------------------------------


def _compose():
    try:
        import compose_spec
    except ImportError:
        unavailable("the PyPI package compose-spec is not installed (requirements-test.txt)")
    return compose_spec


def test_docker_compose_file_validates_against_the_compose_specification(tmp_path):
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        done = _run(
            ["docker", "compose", "-f", str(obs.ROOT / "docker-compose.yml"), "config", "--quiet"],
            cwd=obs.ROOT,
        )
        assert done.returncode == 0, done.stderr  # `config` needs no engine where the plugin exists
    compose_spec = _compose()
    text = (obs.ROOT / "docker-compose.yml").read_text()
    compose_spec.PyCompose.from_yaml(text).validate()
    with pytest.raises(Exception, match="healthchek"):  # the validator does reject mistakes
        compose_spec.PyCompose.from_yaml(
            text.replace("    healthcheck:", "    healthchek:", 1)
        ).validate()


def test_every_compose_service_has_a_healthcheck_and_its_files_exist():
    compose = yaml.safe_load((obs.ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "tasktree",
        "otel-collector",
        "prometheus",
        "alertmanager",
        "grafana",
    } <= set(services)
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    for name, service in services.items():
        if name not in one_shot:
            assert service["healthcheck"]["test"], name
        for needed, dependency in service.get("depends_on", {}).items():
            if needed in one_shot:  # runs once (a volume's owner) and must succeed first
                assert dependency["condition"] == "service_completed_successfully", name
            elif needed != "tasktree":  # monitoring does not wait for what it monitors
                assert dependency["condition"] == "service_healthy", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (obs.ROOT / source).exists(), f"{name}: {source} does not exist"
    assert (obs.ROOT / "Dockerfile").exists() and services["tasktree"]["build"] == "."
    env = dict(
        line.split("=", 1)
        for line in (obs.ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\{(\w+)", (obs.ROOT / "docker-compose.yml").read_text()))
    assert used <= set(env), f"not in .env.example: {used - set(env)}"


def test_the_standby_profile_adds_a_hot_standby_that_tasktree_reads_from_and_fails_over_to():
    """Issue 17: `docker compose --profile standby up` adds a streaming standby; tasktree is
    given both servers (writes to whichever accepts them, reads from the standby first), which
    without the profile simply means postgres."""
    services = yaml.safe_load((obs.ROOT / "docker-compose.yml").read_text())["services"]
    assert services["postgres-standby"]["profiles"] == ["standby"]
    assert [name for name, s in services.items() if "profiles" in s] == ["postgres-standby"]
    env = services["tasktree"]["environment"]
    assert "@postgres:5432,postgres-standby:5432/tasktree" in env["TASKTREE_DATABASE_URL"]
    assert "@postgres-standby:5432,postgres:5432/tasktree" in env["TASKTREE_READ_DATABASE_URL"]
    standby = (obs.ROOT / "postgres" / "standby.sh").read_text()
    assert "pg_basebackup" in standby and "-R" in standby.split()
    assert "application_name=tasktree_standby" in standby  # the name README's sync setup uses
    assert "tasktree_standby" in (obs.ROOT / "README.md").read_text()
    for script in ("standby.sh", "replication.sh"):
        done = _run(["sh", "-n", str(obs.ROOT / "postgres" / script)])
        assert done.returncode == 0, done.stderr
