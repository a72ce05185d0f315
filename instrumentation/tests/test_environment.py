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


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "db_password", "MY_SECRET", "SSH_AUTH_SOCK", "SESSION_ID", "API_KEY"]
)
def test_secret_names(name):
    assert is_secret_name(name)


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
