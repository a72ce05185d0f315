"""Debian's Alertmanager with prometheus/alertmanager.yml: which alerts its inhibit rules silence
and where the Watchdog goes.  Alerts are posted to its API as Prometheus would send them (labels
only: the rule labels plus the expression's), and the API says which are inhibited."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta

import obs_support as obs
import pytest
import yaml
from obs_support import unavailable, wait_until

BINARY = "prometheus-alertmanager"


@pytest.fixture
def alertmanager(prometheus_tools, tmp_path):
    binary = shutil.which(BINARY) or shutil.which("alertmanager")
    if binary is None:
        unavailable(f"no {BINARY} (apt-get install {BINARY})")
    port = obs.free_port()
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={obs.ROOT / 'prometheus' / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return proc.poll() is not None  # stop waiting: it exited

    try:
        wait_until(ready, 30, "Alertmanager to start")
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
        yield url
    finally:
        obs.stop_process(proc)
        log.close()


def _post(url: str, alerts: list[dict]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "annotations": {},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for labels in alerts
    ]
    request = urllib.request.Request(
        url + "/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def _inhibited(url: str) -> dict[str, bool]:
    """alertname (+ instance) -> whether Alertmanager inhibits it now."""
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=10) as resp:
        alerts = json.loads(resp.read())
    return {
        a["labels"]["alertname"]
        + (f"@{a['labels']['instance']}" if "instance" in a["labels"] else ""): bool(
            a["status"]["inhibitedBy"]
        )
        for a in alerts
    }


# Each for a job of its own: TasktreeRunFailed inhibits TasktreeRunsFailingOften of its job.
JOB_ALERTS = [
    {"alertname": name, "job_name": f"etl-{n}", "severity": severity}
    for n, (name, severity) in enumerate(
        (
            ("TasktreeRunFailed", "warning"),
            ("TasktreeRunsFailingOften", "warning"),
            ("TasktreeTasksStalled", "warning"),
            ("TasktreeJobNotSucceeding", "critical"),
            ("TasktreeJobNotStarted", "critical"),
            ("TasktreeRunTooLong", "warning"),
        )
    )
]
WATCHDOG = {"alertname": "Watchdog", "severity": "none"}


def _settled(url: str, expected: dict[str, bool]) -> dict[str, bool]:
    try:
        return wait_until(lambda: _inhibited(url) == expected and expected, 10, "inhibitions")
    except Exception:  # noqa: BLE001 (show what Alertmanager says instead)
        return _inhibited(url)


DOWN_A = {"alertname": "TasktreeDown", "job": "tasktree", "instance": "a:8080"}
SERVICE_DOWN = {"alertname": "TasktreeServiceDown", "job": "tasktree"}
STORE = {"alertname": "TasktreeStoreUnreachable", "job": "tasktree"}
LAGGING = {"alertname": "TasktreeIngestLagging"}


@pytest.mark.parametrize(
    "others,jobs_inhibited,inhibited",
    [
        # one process of several down: the job alerts are still right
        ([DOWN_A], False, {"TasktreeDown@a:8080": False}),
        # the whole service down: job alerts and each process's TasktreeDown are inhibited
        (
            [SERVICE_DOWN, DOWN_A],
            True,
            {"TasktreeServiceDown": False, "TasktreeDown@a:8080": True},
        ),
        # PostgreSQL unreadable: job alerts inhibited, other service alerts not
        (
            [STORE, LAGGING],
            True,
            {"TasktreeStoreUnreachable": False, "TasktreeIngestLagging": False},
        ),
    ],
    ids=["one-process-down", "service-down", "store-unreachable"],
)
def test_job_alerts_are_inhibited_only_while_the_whole_service_is_down_or_blind(
    alertmanager, others, jobs_inhibited, inhibited
):
    _post(
        alertmanager,
        [{**labels, "severity": "critical"} for labels in others] + [*JOB_ALERTS, WATCHDOG],
    )
    expected = (
        {a["alertname"]: jobs_inhibited for a in JOB_ALERTS} | inhibited | {"Watchdog": False}
    )
    assert _settled(alertmanager, expected) == expected


def test_a_failed_latest_run_inhibits_the_runs_failing_often_alert_of_its_job_only(alertmanager):
    failed = {"alertname": "TasktreeRunFailed", "job_name": "etl", "severity": "warning"}
    often = {"alertname": "TasktreeRunsFailingOften", "severity": "warning"}
    _post(alertmanager, [failed, {**often, "job_name": "etl"}, {**often, "job_name": "flappy"}])

    def inhibited() -> dict[str, bool]:
        with urllib.request.urlopen(alertmanager + "/api/v2/alerts", timeout=10) as resp:
            alerts = json.loads(resp.read())
        return {
            "{alertname}@{job_name}".format(**a["labels"]): bool(a["status"]["inhibitedBy"])
            for a in alerts
        }

    expected = {
        "TasktreeRunFailed@etl": False,
        "TasktreeRunsFailingOften@etl": True,
        "TasktreeRunsFailingOften@flappy": False,
    }
    try:
        seen = wait_until(lambda: inhibited() == expected and expected, 10, "inhibitions")
    except AssertionError:
        seen = inhibited()
    assert seen == expected


def test_the_watchdog_goes_to_its_own_receiver_every_minute(prometheus_tools):
    done = subprocess.run(
        [
            "amtool",
            "config",
            "routes",
            "test",
            "--verify.receivers=watchdog",
            f"--config.file={obs.ROOT / 'prometheus' / 'alertmanager.yml'}",
            "alertname=Watchdog",
            "severity=none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((obs.ROOT / "prometheus" / "alertmanager.yml").read_text())
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "watchdog"]
    assert route["repeat_interval"] == "1m"
