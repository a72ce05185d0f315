"""The shipped stack is safe to expose and loses nothing silently (issue 13), checked on the files
themselves: docker-compose.yml, .env.example, collector-config/, prometheus/prometheus.yml and
grafana/postgres-reader.sh.  There is no Docker engine and no otelcol-contrib binary here (the real
collector of the tests is ``rotel``), so the Compose and contrib Collector settings are checked
statically; ``tasktree serve`` refusing the example's token is checked by running it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import obs_support as obs
import psycopg
import pytest
import yaml

from tasktree.exporter.settings import EXAMPLE_TOKEN

COMPOSE_TEXT = (obs.ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
COLLECTOR_DIR = obs.ROOT / "collector-config"
CONFIGS = sorted(COLLECTOR_DIR.glob("*.yaml"))


def _collector(name: str) -> dict:
    return yaml.safe_load((COLLECTOR_DIR / name).read_text())


def _env_example() -> dict[str, str]:
    lines = (obs.ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _mib(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([kmg])b?", str(size).lower()).groups()
    return int(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]


# -- secrets --------------------------------------------------------------------------------


def test_no_env_file_is_shipped_and_git_ignores_it():
    tracked = subprocess.run(
        ["git", "ls-files", "--", ".env"], cwd=obs.ROOT, capture_output=True, text=True
    )
    assert tracked.returncode == 0 and tracked.stdout == "", ".env is in the repository"
    assert ".env" in (obs.ROOT / ".gitignore").read_text().split()


def test_env_example_token_is_the_placeholder_tasktree_refuses():
    assert _env_example()["TASKTREE_AUTH_TOKEN"] == EXAMPLE_TOKEN


def test_every_setting_compose_reads_is_guarded_and_empty_or_refused_in_the_example():
    example = _env_example()
    references = re.findall(r"\$\{(\w+)([^}]*)\}", COMPOSE_TEXT)
    assert references
    for name, rest in references:
        assert rest.startswith(":?"), f"${{{name}{rest}}}: no default, compose must refuse it unset"
        assert name in example, f"{name} is not in .env.example"
    for name, value in example.items():
        assert value in ("", EXAMPLE_TOKEN), f".env.example gives {name} a value that works"


@pytest.mark.parametrize(
    "env",
    [
        {"TASKTREE_AUTH_TOKEN": EXAMPLE_TOKEN},
        {"TASKTREE_INGEST_TOKENS": f"ci:{EXAMPLE_TOKEN}", "TASKTREE_VIEWER_TOKENS": "v:abc"},
    ],
    ids=["auth-token", "ingest-token"],
)
def test_tasktree_serve_refuses_to_start_with_the_example_token(env, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    done = subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", "serve", "--host", "0.0.0.0"],
        env={**clean, "TASKTREE_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert ".env.example" in done.stderr and "random secret" in done.stderr, done.stderr
    assert "secrets.token_urlsafe" in done.stderr  # says how to make one


# -- who can reach what -------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_collector_receiver_requires_a_bearer_token(path):
    config = yaml.safe_load(path.read_text())
    for name, receiver in config["receivers"].items():
        for protocol, settings in receiver["protocols"].items():
            authenticator = (settings or {}).get("auth", {}).get("authenticator")
            assert authenticator, f"{name}/{protocol} takes spans without a credential"
            assert authenticator.split("/")[0] == "bearertokenauth"
            assert authenticator in config["service"]["extensions"]
            assert config["extensions"][authenticator]["token"] == "${env:OTELCOL_INGEST_TOKEN}"
    assert "OTELCOL_INGEST_TOKEN" in SERVICES["otel-collector"]["environment"]


@pytest.mark.parametrize("service", ["prometheus", "alertmanager"])
def test_prometheus_and_alertmanager_are_published_on_loopback_only(service):
    ports = SERVICES[service]["ports"]
    assert ports and all(str(port).startswith("127.0.0.1:") for port in ports), ports


def test_no_service_enables_prometheus_lifecycle_api():
    assert "--web.enable-lifecycle" not in COMPOSE_TEXT


# -- the containers -----------------------------------------------------------------------------


def test_the_collector_runs_as_the_images_user_with_a_memory_limit_above_memory_limiter():
    collector = SERVICES["otel-collector"]
    user = str(collector.get("user", ""))
    assert user and user.split(":")[0] not in ("0", "root"), f"runs as {user or 'the default'}"
    container_mib = _mib(collector["mem_limit"])
    config_path = collector["volumes"][0].split(":")[0]
    limiter = yaml.safe_load((obs.ROOT / config_path).read_text())["processors"]["memory_limiter"]
    assert limiter["spike_limit_mib"] < limiter["limit_mib"] < container_mib
    # the queue volume is handed to that user by a one-shot service that must succeed first
    [queue] = [v for v in collector["volumes"] if v.startswith("otelcol-queue:")]
    init = collector["depends_on"]["otelcol-queue-init"]
    assert init["condition"] == "service_completed_successfully"
    owner = SERVICES["otelcol-queue-init"]["command"]
    assert owner[:3] == ["chown", "-R", user] and owner[3] == queue.split(":")[1]


def test_the_load_balancing_collector_memory_limiter_has_an_absolute_limit():
    limiter = _collector("otelcol-loadbalancing.yaml")["processors"]["memory_limiter"]
    assert limiter["spike_limit_mib"] < limiter["limit_mib"] <= 512


def test_postgres_healthcheck_asks_over_tcp():
    test = " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in test and "-h 127.0.0.1" in test


def test_every_image_is_pinned_to_a_full_version():
    for name, service in SERVICES.items():
        if "build" in service:
            continue  # built from this repository
        image = service["image"]
        # major.minor.patch; PostgreSQL's own versions are major.minor (16.8)
        full = r"\d+\.\d+" if image.startswith("postgres:") else r"v?\d+\.\d+\.\d+"
        assert re.fullmatch(r"[\w./-]+:" + full, image), f"{name}: {image} is not pinned"
    [base] = re.findall(r"^FROM (\S+)", (obs.ROOT / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), base


def test_the_reader_password_reaches_psql_as_a_variable_never_pasted_into_sql():
    script = (obs.ROOT / "grafana" / "postgres-reader.sh").read_text()
    heredoc = re.search(r"<<\s*('?)SQL\1\n(.*?)\nSQL\n", script, re.S)
    assert heredoc and heredoc.group(1) == "'", "the heredoc must be quoted (no expansion)"
    sql = heredoc.group(2)
    assert "$" not in sql, "a shell value is pasted into the SQL"
    assert "PASSWORD :'reader_password'" in sql
    assert '--set=reader_password="$GRAFANA_DB_PASSWORD"' in script


def test_tasktree_keeps_its_sign_in_key_across_recreates():
    tasktree = SERVICES["tasktree"]
    assert tasktree["environment"]["TASKTREE_SECRET_KEY"].startswith("${TASKTREE_SECRET_KEY:?")
    data_dir = re.search(r"TASKTREE_DATA_DIR=(\S+)", (obs.ROOT / "Dockerfile").read_text())[1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in tasktree["volumes"]}
    assert mounts.get(data_dir) in COMPOSE["volumes"], "no named volume on the data dir"


# -- nothing lost, nothing silent -------------------------------------------------------------


def _forever(retry: dict) -> bool:
    return retry.get("enabled", True) is True and str(retry.get("max_elapsed_time")) in ("0", "0s")


def test_the_load_balancing_collector_retries_from_its_persistent_queue_until_delivered():
    config = _collector("otelcol-loadbalancing.yaml")
    [name] = config["service"]["pipelines"]["traces"]["exporters"]
    exporter = config["exporters"][name]
    assert _forever(exporter["retry_on_failure"])
    storage = exporter["sending_queue"]["storage"]
    assert storage.split("/")[0] == "file_storage" and storage in config["service"]["extensions"]
    # per instance: no queue in memory and no retry that gives up: failures come back to the queue
    per_instance = exporter["protocol"]["otlp"]
    assert per_instance["sending_queue"]["enabled"] is False
    retry = per_instance.get("retry_on_failure", {})
    assert retry.get("enabled") is False or _forever(retry)
    readme = (COLLECTOR_DIR / "README.md").read_text()
    assert "one place" in readme and "persistent queue" in readme


def test_the_single_collector_retries_forever_through_its_persistent_queue():
    config = _collector("otelcol.yaml")
    [name] = config["service"]["pipelines"]["traces"]["exporters"]
    assert _forever(config["exporters"][name]["retry_on_failure"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_prometheus_scrapes_the_collectors_own_metrics(path):
    readers = yaml.safe_load(path.read_text())["service"]["telemetry"]["metrics"]["readers"]
    [exporter] = [r["pull"]["exporter"]["prometheus"] for r in readers if "pull" in r]
    assert exporter["host"] == "0.0.0.0"
    prometheus = yaml.safe_load((obs.ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"otel-collector:{exporter['port']}" in targets


@pytest.mark.parametrize("service", ["prometheus", "otel-collector"])
def test_monitoring_starts_even_when_tasktree_never_gets_healthy(service):
    assert SERVICES[service]["depends_on"]["tasktree"]["condition"] == "service_started"


def _as_postgres_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def test_the_reader_script_stores_a_hostile_password_literally_in_a_real_postgresql():
    """Run grafana/postgres-reader.sh as the postgres image does, on a throwaway cluster, with a
    password full of quotes and shell syntax; then sign in with it over TCP (scram-sha-256)."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        obs.unavailable("no PostgreSQL server binaries (Debian postgresql)")
    bin_dir = binaries[-1].parent
    tmp_path = Path(tempfile.mkdtemp(prefix="tasktree-reader-"))  # pytest's is root-only
    data, sockets = tmp_path / "data", tmp_path / "sock"
    sockets.mkdir()
    script = tmp_path / "postgres-reader.sh"
    shutil.copy(obs.ROOT / "grafana" / "postgres-reader.sh", script)
    if os.geteuid() == 0:
        for path in (tmp_path, sockets, script):
            shutil.chown(path, "postgres")
    run = dict(capture_output=True, text=True, timeout=120)
    port = obs.free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(tmp_path / "log")]
    pwned = tmp_path / "pwned"
    password = f"""it's "x"; DROP ROLE postgres; -- $(touch {pwned}) ${{HOME}} `id` :'x'"""
    try:
        done = subprocess.run(
            _as_postgres_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            **run,
        )
        assert done.returncode == 0, done.stderr
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
        done = subprocess.run(_as_postgres_user([*pg_ctl, "-o", options, "start"]), **run)
        assert done.returncode == 0, done.stderr
        env = {
            **os.environ,
            "PGHOST": str(sockets),
            "PGPORT": str(port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "postgres",
            "GRAFANA_DB_PASSWORD": password,
        }
        done = subprocess.run(_as_postgres_user(["sh", str(script)]), env=env, **run)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not pwned.exists(), "the shell ran a command from the password"
        url = f"host=127.0.0.1 port={port} dbname=postgres user=grafana_reader"
        with psycopg.connect(url, password=password) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'")
            assert roles.fetchone() == (1,)
    finally:
        subprocess.run(_as_postgres_user([*pg_ctl, "-m", "immediate", "stop"]), **run)
        shutil.rmtree(tmp_path, ignore_errors=True)
