"""The resource: process attributes, container id, environment capture with secrets redacted."""

from __future__ import annotations

import os

import pytest

from tasktree.instrumentation.environment import (
    REDACTED,
    build_resource,
    captured_environment,
    container_id,
    is_secret_name,
    mask_url_passwords,
    redacted_args,
)

ENVIRON = {
    "BATCH_DATE": "2024-05-01",
    "BATCH_API_TOKEN": "tok-123",
    "BATCH_DB_PASSWORD": "hunter2",
    "BATCH_AWS_SECRET_ACCESS_KEY": "abc",
    "BATCH_CREDENTIALS_FILE": "/run/creds",
    "BATCH_DATABASE_URL": "postgresql://etl:s3cret@db:5432/warehouse",
    "BATCH_private_key_path": "/k",
    "OTHER": "not captured",
    "PWD": "/home/job",
}


def test_capture_takes_names_matching_the_globs_and_redacts_secret_looking_ones():
    captured = captured_environment("BATCH_*,PWD", environ=ENVIRON)
    prefix = "process.environment_variable."
    assert captured[prefix + "BATCH_DATE"] == "2024-05-01"
    assert captured[prefix + "PWD"] == "/home/job"  # PWD is a directory, not a password
    secrets = ("BATCH_API_TOKEN", "BATCH_DB_PASSWORD", "BATCH_AWS_SECRET_ACCESS_KEY")
    for name in (*secrets, "BATCH_CREDENTIALS_FILE", "BATCH_private_key_path"):
        assert captured[prefix + name] == REDACTED
    assert (
        captured[prefix + "BATCH_DATABASE_URL"] == f"postgresql://etl:{REDACTED}@db:5432/warehouse"
    )
    assert prefix + "OTHER" not in captured
    assert (
        "hunter2" not in repr(captured)
        and "tok-123" not in repr(captured)
        and "s3cret" not in repr(captured)
    )


def test_capture_reads_its_globs_and_extra_redactions_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKTREE_CAPTURE_ENV", " BATCH_DATE , OTHER")
    monkeypatch.setenv("TASKTREE_REDACT_ENV", "OTH*")
    captured = captured_environment(environ=ENVIRON)
    assert captured == {
        "process.environment_variable.BATCH_DATE": "2024-05-01",
        "process.environment_variable.OTHER": REDACTED,
    }


def test_nothing_is_captured_by_default(monkeypatch):
    monkeypatch.delenv("TASKTREE_CAPTURE_ENV", raising=False)
    assert captured_environment(environ=ENVIRON) == {}


@pytest.mark.parametrize("name", [
    "GITHUB_TOKEN", "db_password", "MY_SECRET", "SSH_AUTH_SOCK", "SESSION_ID", "API_KEY",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",  # where ingest tokens go
    "DB_PASS", "MYSQL_PWD", "SMTP_PWD", "GITHUB_PAT", "SLACK_WEBHOOK_URL", "AZURE_STORAGE_SIG",
])  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "PWD", "OLDPWD", "HOME", "SIGNAL_NAME", "PATTERN"])
def test_names_that_are_no_secrets(name):
    assert not is_secret_name(name)


def test_extra_redactions_match_whatever_the_case():
    environ = {"MY_CONN": "host=db password=x", "OTHER": "y", "KEPT": "z"}
    captured = captured_environment("*", "my_conn, other ", environ=environ)
    prefix = "process.environment_variable."
    assert captured == {prefix + "MY_CONN": REDACTED, prefix + "OTHER": REDACTED,
                        prefix + "KEPT": "z"}  # fmt: skip


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:p@ss-hunter2@h/db", f"postgresql://u:{REDACTED}@h/db"),
    ("https://h/db?password=hunter2&sslmode=require",
     f"https://h/db?password={REDACTED}&sslmode=require"),
    ("https://acct.blob/c?sv=1&sig=hunter2%2F&se=2", f"https://acct.blob/c?sv=1&sig={REDACTED}&se=2"),
    ("https://api/x?access_token=hunter2", f"https://api/x?access_token={REDACTED}"),
    ("http://example.com/a@b?page=2", "http://example.com/a@b?page=2"),  # no userinfo
    ("user@host:/srv/data", "user@host:/srv/data"),
])  # fmt: skip
def test_url_passwords_and_secret_query_parameters_are_masked(url, masked):
    assert mask_url_passwords(url) == masked


def test_url_passwords_and_secret_options_are_masked_in_command_lines():
    assert (
        mask_url_passwords("redis://:pw@h:6379/0 and https://u:p@x")
        == f"redis://:{REDACTED}@h:6379/0 and https://u:{REDACTED}@x"
    )
    args = ["job", "--password=x", "--api-key", "k", "--no-auth", "file.csv", "--verbose"]
    hidden = f"--password={REDACTED}"
    assert redacted_args(args) == [
        "job", hidden, "--api-key", REDACTED, "--no-auth", "file.csv", "--verbose",
    ]  # fmt: skip


def test_secrets_in_other_shapes_of_arguments_are_masked():
    args = ["tool", "--pass=hunter2a", "--auth", "hunter2b", "--access-key", "hunter2c",
            "PGPASSWORD=hunter2d", "--db-password", "hunter2e", "-no-auth", "kept.txt", "A=kept"]
    assert redacted_args(args) == [
        "tool", f"--pass={REDACTED}", "--auth", REDACTED, "--access-key", REDACTED,
        f"PGPASSWORD={REDACTED}", "--db-password", REDACTED, "-no-auth", "kept.txt", "A=kept",
    ]  # fmt: skip


def test_secrets_inside_a_script_argument_are_masked():
    script = ("psql --password hunter2a -h db --no-auth kept && TOKEN=hunter2b run"
              " && curl -H 'Authorization: Bearer hunter2c' https://u:hunter2d@h/?token=hunter2e")
    [shell, flag, masked] = redacted_args(["sh", "-c", script])
    assert (shell, flag) == ("sh", "-c") and "hunter2" not in masked
    assert masked == (
        f"psql --password {REDACTED} -h db --no-auth kept && TOKEN={REDACTED} run"
        f" && curl -H 'Authorization: Bearer {REDACTED}' https://u:{REDACTED}@h/?token={REDACTED}"
    )


def test_container_id_from_cgroup_v1_then_mountinfo(tmp_path):
    cid = "a" * 64
    cgroup, mountinfo = tmp_path / "cgroup", tmp_path / "mountinfo"
    cgroup.write_text(f"12:memory:/docker/{cid}\n")
    assert container_id(str(cgroup), str(mountinfo)) == cid
    cgroup.write_text("0::/\n")
    mountinfo.write_text(
        f"1 2 0:3 /var/lib/docker/containers/{'b' * 64}/hostname /etc/hostname rw - ext4 x rw\n"
    )
    assert container_id(str(cgroup), str(mountinfo)) == "b" * 64
    mountinfo.write_text("1 2 0:3 / / rw - ext4 x rw\n")
    assert container_id(str(cgroup), str(mountinfo)) is None
    assert container_id(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_resource_has_host_process_runtime_and_user_and_env_beats_detection(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=override,team=data")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    attributes = build_resource(capture_env="").attributes
    assert attributes["host.name"] == "override" and attributes["team"] == "data"
    assert attributes["process.pid"] == os.getpid()
    assert attributes["process.runtime.name"] == "cpython"
    assert attributes["process.owner"]
    assert attributes["process.command_line"]
    assert attributes["service.name"]


def test_service_name_argument_beats_otel_service_name_which_beats_the_default(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert build_resource().attributes["service.name"] == "from-env"
    assert build_resource(service_name="explicit").attributes["service.name"] == "explicit"
